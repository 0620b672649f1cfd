"""The classification plugin: Hinton's loss against its formula, augmentations, models, data, metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdengine import DataError, DataInfo, KDEngineError, LossContext
from kdengine_classification.augment import AugmentParams, BatchAugment, random_crop
from kdengine_classification.data import Cifar100, Digits, ImageFolder
from kdengine_classification.losses import CrossEntropy, KLDivergence
from kdengine_classification.metrics import Top1, Top5
from kdengine_classification.models import TimmModel, TorchvisionModel

INFO = DataInfo(task="classification", in_channels=3, num_classes=10)


def test_kl_div_matches_the_formula_by_hand():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    T = 4.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = [math.exp(v / T) for v in s_row]
        zt = [math.exp(v / T) for v in t_row]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        expected += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    expected = T * T * expected / 2  # T^2 scaling, mean over the batch
    term = KLDivergence({"temperature": T})
    value = term(LossContext(inputs=None, targets=None, student=student, teacher=teacher))
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert term(LossContext(None, None, teacher, teacher)).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_div_gradient_reaches_the_student_only():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5)
    KLDivergence()(LossContext(None, None, student, teacher)).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_cross_entropy_takes_indices_and_soft_targets():
    logits = torch.randn(3, 4)
    labels = torch.tensor([0, 2, 3])
    ce = CrossEntropy()
    hard = ce(LossContext(None, labels, logits))
    soft = ce(LossContext(None, torch.nn.functional.one_hot(labels, 4).float(), logits))
    assert hard.item() == pytest.approx(soft.item(), rel=1e-6)


def test_random_crop_keeps_shape_and_shifts_content():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    torch.manual_seed(0)
    out = random_crop(x, 1)
    assert out.shape == x.shape
    assert not all(torch.equal(o, x[0]) for o in out)  # some image moved
    for o in out:  # every crop is a shifted window of the padded image
        padded = torch.nn.functional.pad(x[0], (1, 1, 1, 1))
        assert any(torch.equal(o, padded[:, i:i + 4, j:j + 4]) for i in range(3) for j in range(3))


def test_batch_augment_cutmix_mixup_gives_soft_labels():
    aug = BatchAugment(AugmentParams(crop_padding=2, flip=True, color_jitter=0.4, cutmix_alpha=1.0, mixup_alpha=0.2),
                       num_classes=10, mean=torch.zeros(3), std=torch.ones(3))
    x = torch.rand(6, 3, 16, 16)
    y = torch.arange(6)
    out_x, out_y = aug(x, y)
    assert out_x.shape == x.shape
    assert out_y.shape == (6, 10)
    assert torch.allclose(out_y.sum(1), torch.ones(6))


def test_no_augmentation_is_identity():
    aug = BatchAugment(AugmentParams(), 10, torch.zeros(1), torch.ones(1))
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([1, 2])
    ox, oy = aug(x, y)
    assert torch.equal(ox, x) and torch.equal(oy, y)


def test_cifar_stem_keeps_resolution():
    plain = TimmModel({"model": "resnet18"}).build(INFO)
    cifar = TimmModel({"model": "resnet18", "cifar_stem": True}).build(INFO)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    assert plain.forward_features(x).shape[-1] == 1 and cifar.forward_features(x).shape[-1] == 4


def test_mobilenet_v2_widths_match_the_paper_sizes():
    info = DataInfo(task="classification", num_classes=100)
    full = TorchvisionModel({"model": "mobilenet_v2", "cifar_stem": True}).build(info)
    half = TorchvisionModel({"model": "mobilenet_v2", "width_mult": 0.5, "cifar_stem": True}).build(info)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(full) / 1e6 == pytest.approx(2.35, abs=0.01)
    assert count(half) / 1e6 == pytest.approx(0.82, abs=0.01)
    assert half(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_single_channel_input():
    model = TorchvisionModel({"model": "mobilenet_v2", "width_mult": 0.25}).build(DataInfo("classification", 1, 10))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_unknown_model_names_suggest():
    with pytest.raises(KDEngineError, match="timm has no model 'resnet1O1'"):
        TimmModel({"model": "resnet1O1"}).build(INFO)
    with pytest.raises(KDEngineError, match="did you mean.*mobilenet_v2"):
        TorchvisionModel({"model": "mobilenet_2"}).build(INFO)


def test_pretrained_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KDEngineError, match="could not load pretrained weights"):
        TimmModel({"model": "resnet18", "pretrained": True}).build(INFO)


def test_digits_splits_are_deterministic_and_disjoint():
    d = Digits({"image_size": 8, "train_size": 100})
    a, b = d.train_set(), Digits({"image_size": 8, "train_size": 100}).train_set()
    assert len(a) == 100 and len(d.eval_set()) == 1797 - 100
    assert torch.equal(a.images, b.images)
    x, y = a[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= int(y) < 10


def test_cifar100_missing_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="CIFAR-100 not found"):
        Cifar100({"root": str(tmp_path)}).check()


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (20, 12), (10, 200, 30)).save(folder / "a.png")
    ds = ImageFolder({"root": str(tmp_path), "image_size": 16})
    assert ds.info().num_classes == 2 and ds.info().class_names == ("cat", "dog")
    x, y = ds.train_set()[1]
    assert x.shape == (3, 16, 16) and y == 1
    (tmp_path / "val" / "dog" / "b.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"b\.png: cannot read image"):
        [ds.eval_set()[i] for i in range(3)]
    with pytest.raises(DataError, match="folder not found"):
        ImageFolder({"root": str(tmp_path / "none")}).check()


def test_topk_metrics_accumulate_across_batches():
    top1 = Top1().build(INFO)
    top5 = Top5().build(INFO)
    logits = torch.eye(10)
    logits[0, 1] = 0.5  # row 0 ranks class 0 first and class 1 second
    labels = torch.arange(10)
    labels[0] = 1  # so row 0 is wrong at top-1 and right at top-5
    for metric in (top1, top5):
        metric.update(logits[:5], labels[:5])
        metric.update(logits[5:], labels[5:])
    assert top1.compute().item() == pytest.approx(0.9)
    assert top5.compute().item() == pytest.approx(1.0)
