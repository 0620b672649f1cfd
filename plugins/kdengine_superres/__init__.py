"""Built-in kdengine plugin: super-resolution distillation.

SwinIR teacher (through spandrel), compact channel-attention student, HR-folder / paired /
scikit-image datasets with on-the-fly degradation, L1 + output KD + feature matching + VGG perceptual losses,
and PSNR/SSIM on the Y channel as SR papers report them.
"""

from __future__ import annotations

from kdengine import hookimpl

from .data import SkimageSR, SRFolder, SRPaired
from .losses import L1, FeatureMatch, Perceptual, TeacherL1
from .metrics import PSNRRGB, PSNRY, SSIMY
from .models import AttentionSRNet, SpandrelModel, SwinIR


@hookimpl
def register_teachers(register):
    register("swinir", SwinIR)
    register("attention_srnet", AttentionSRNet)
    register("spandrel", SpandrelModel)


@hookimpl
def register_students(register):
    register("attention_srnet", AttentionSRNet)
    register("swinir", SwinIR)


@hookimpl
def register_datasets(register):
    register("sr_folder", SRFolder)
    register("sr_paired", SRPaired)
    register("skimage_sr", SkimageSR)


@hookimpl
def register_loss_terms(register):
    register("l1", L1)
    register("teacher_l1", TeacherL1)
    register("feature_match", FeatureMatch)
    register("perceptual", Perceptual)


@hookimpl
def register_metrics(register):
    register("psnr_y", PSNRY)
    register("ssim_y", SSIMY)
    register("psnr", PSNRRGB)
