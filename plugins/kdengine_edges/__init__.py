"""Built-in kdengine plugin: edge detection.

Registers the U-Net (both roles), the datasets ``bsds500``, ``synthetic_edges`` and
``edge_folder``, the loss terms ``weighted_bce``, ``sigmoid_mse`` and ``balanced_bce``, the dense
distillation terms ``soft_bce``, ``pixel_kl`` and ``cwd``, and the metrics ``dice`` and ``ods_ois``.
"""

from __future__ import annotations

from kdengine import hookimpl

from kdengine_edges.bsds import BSDS500
from kdengine_edges.dense_kd import ChannelWiseDistillation, PixelKL, SoftBCE
from kdengine_edges.folder import EdgeFolder
from kdengine_edges.photos import PhotoFolder
from kdengine_edges.losses import BalancedBCE, SigmoidMSE, WeightedBCE
from kdengine_edges.metrics import Dice, OdsOis
from kdengine_edges.models import UNet
from kdengine_edges.synthetic_data import SyntheticEdges


@hookimpl
def register_teachers(register):
    register("unet", UNet)


@hookimpl
def register_students(register):
    register("unet", UNet)


@hookimpl
def register_datasets(register):
    register("bsds500", BSDS500)
    register("synthetic_edges", SyntheticEdges)
    register("edge_folder", EdgeFolder)
    register("photo_folder", PhotoFolder)


@hookimpl
def register_loss_terms(register):
    register("weighted_bce", WeightedBCE)
    register("sigmoid_mse", SigmoidMSE)
    register("balanced_bce", BalancedBCE)
    register("soft_bce", SoftBCE)
    register("pixel_kl", PixelKL)
    register("cwd", ChannelWiseDistillation)


@hookimpl
def register_metrics(register):
    register("dice", Dice)
    register("ods_ois", OdsOis)
