"""kdengine.testing's contract checks on every component of the super-resolution plugin."""

from __future__ import annotations

import warnings

import torch

from kdengine import DataInfo, testing
from kdengine_superres.data import SkimageSR
from kdengine_superres.losses import L1, FeatureMatch, Perceptual, TeacherL1, vgg19_features
from kdengine_superres.metrics import PSNRRGB, PSNRY, SSIMY
from kdengine_superres.models import AttentionSRNet, SwinIR

INFO = DataInfo(task="superres", in_channels=3, scale=4)
TINY_SWIN = {"size": "tiny", "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4}
warnings.filterwarnings("ignore", message="torch.meshgrid")


def test_model_factories():
    testing.check_model_factory(AttentionSRNet, {"blocks": 2, "channels": 8}, INFO, (2, 3, 8, 8))
    testing.check_model_factory(SwinIR, TINY_SWIN, INFO, (2, 3, 8, 8))


def test_params():
    testing.check_params(AttentionSRNet, {"blocks": 4}, [{"blocks": 0}, {"channels": 2}, {"depth": 3}])
    testing.check_params(SkimageSR, {"patch": 96}, [{"patch": 90}, {"test_images": ["lena"]}])


def test_dataset():
    # val and test hold whole photographs of different sizes: they collate into lists
    testing.check_dataset(SkimageSR, {"patch": 32, "patches_per_image": 2, "train_images": ["coffee", "rocket"],
                                      "val_images": ["coins", "moon"], "test_images": ["astronaut", "motorcycle"]})


def _batches():
    generator = torch.Generator().manual_seed(0)
    out = []
    for batch in (1, 3):
        target = torch.rand(batch, 3, 24, 24, generator=generator)
        out.append(((target + 0.05 * torch.randn(target.shape, generator=generator)).clamp(0, 1), target))
    return out


def test_metrics():
    for cls in (PSNRY, SSIMY, PSNRRGB):
        testing.check_metric(cls, {"scale": 4}, INFO, _batches())


def test_loss_terms(tmp_path):
    student = AttentionSRNet({"blocks": 2, "channels": 8}).build(INFO)
    teacher = SwinIR(TINY_SWIN).build(INFO).eval()
    inputs, targets = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
    make = lambda term: testing.context_from_models(term, student, teacher, inputs, targets)  # noqa: E731
    testing.check_loss_term(L1, {}, make)
    testing.check_loss_term(TeacherL1, {}, make)
    testing.check_loss_term(FeatureMatch, {"student_layers": ["body.1"], "teacher_layers": ["layers.0"]}, make)
    holder = torch.nn.Module()
    holder.features = vgg19_features()
    torch.save(holder.state_dict(), tmp_path / "vgg19.pth")
    testing.check_loss_term(Perceptual, {"weights": str(tmp_path / "vgg19.pth"), "layers": ["relu2_1"]}, make)
