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


def test_mobilenet_v2_as_the_cifar_benchmarks_build_it():
    """CRD's CIFAR MobileNetV2 0.5x: channels rounded to 4 (12, not 16, in the 24-channel stage) and
    that stage unstrided, so the last maps are 4x4 at 32 px where torchvision's are 2x2."""
    from kdengine.plugins.features import FeatureTaps

    info = DataInfo(task="classification", num_classes=100)
    model = TorchvisionModel({"model": "mobilenet_v2", "width_mult": 0.5, "cifar_stem": True, "round_nearest": 4,
                              "stride_one": ["features.2.conv.1.0"]}).build(info).eval()
    taps = FeatureTaps(model, ["features.3", "features.6", "features.13", "features.17", "features.18"])
    model(torch.randn(1, 3, 32, 32))
    shapes = [tuple(f.shape[1:]) for f in taps.collect().values()]
    taps.close()
    assert shapes == [(12, 32, 32), (16, 16, 16), (48, 8, 8), (160, 4, 4), (1280, 4, 4)]
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(0.81, abs=0.005)


@pytest.mark.parametrize("path,needle", [("features.99", "has no module 'features.99'"),
                                         ("features.2", "is a InvertedResidual, not a convolution")])
def test_stride_one_names_a_convolution(path, needle):
    with pytest.raises(KDEngineError, match=needle):
        TorchvisionModel({"model": "mobilenet_v2", "stride_one": [path]}).build(INFO)


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


def _indices(*splits) -> list[set[int]]:
    return [set(split.indices.tolist()) for split in splits]


def test_digits_train_val_test_are_disjoint_sized_and_deterministic():
    d = Digits({"image_size": 8, "train_size": 100, "val_size": 50})
    train, val, test = d.train_set(), d.val_set(), d.test_set()
    assert (len(train), len(val), len(test)) == (100, 50, 1797 - 150)
    a, b, c = _indices(train, val, test)
    assert not (a & b or a & c or b & c) and len(a | b | c) == 1797
    again = Digits({"image_size": 8, "train_size": 100, "val_size": 50})
    assert torch.equal(again.val_set().indices, val.indices) and torch.equal(again.train_set().images, train.images)
    other = Digits({"image_size": 8, "train_size": 100, "val_size": 50, "split_seed": 1}).val_set()
    assert not torch.equal(other.indices, val.indices)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= int(y) < 10


def test_digits_test_images_do_not_depend_on_val_size():
    # val is drawn from the far end of the shuffled images, so a test_size keeps its images
    small = Digits({"image_size": 8, "train_size": 100, "val_size": 10, "test_size": 200}).test_set()
    large = Digits({"image_size": 8, "train_size": 100, "val_size": 300, "test_size": 200}).test_set()
    assert torch.equal(small.indices, large.indices)


def test_digits_splits_must_fit_in_the_dataset():
    with pytest.raises(ValueError, match="1797 images"):
        Digits({"train_size": 1700, "val_size": 97})


def test_cifar100_missing_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="CIFAR-100 not found"):
        Cifar100({"root": str(tmp_path)}).check()


def test_cifar100_val_is_a_seeded_slice_of_the_official_train_set(monkeypatch):
    from kdengine_classification.data import InMemoryImages

    def fake_load(self, train):  # an official train set of 600 and a test set of 100 images
        count = 600 if train else 100
        images = torch.arange(count, dtype=torch.int64).view(count, 1, 1, 1).expand(count, 3, 2, 2)
        return InMemoryImages(images.to(torch.uint8), torch.arange(count) % 100, (0.5,) * 3, (0.5,) * 3)

    monkeypatch.setattr(Cifar100, "_load", fake_load)
    data = Cifar100({"val_size": 150})
    train, val, test = data.train_set(), data.val_set(), data.test_set()
    assert (len(train), len(val), len(test)) == (450, 150, 100)
    a, b = _indices(train, val)
    assert not a & b and a | b == set(range(600))
    assert torch.equal(Cifar100({"val_size": 150}).val_set().indices, val.indices)
    assert not torch.equal(Cifar100({"val_size": 150, "split_seed": 1}).val_set().indices, val.indices)
    # the images travel with their indices
    assert torch.equal(val.images[:, 0, 0, 0].long(), val.indices % 256)


def test_cifar100_default_holds_out_5000_of_the_50000_train_images():
    from kdengine import holdout

    assert Cifar100.Params().val_size == 5000
    train, val = holdout(range(50_000), Cifar100.Params().val_size, 0)
    assert (len(train), len(val)) == (45_000, 5000)


def _class_folders(root, split, count, size=(20, 12)):
    from PIL import Image

    for cls in ("cat", "dog"):
        folder = root / split / cls
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", size, (10 * i, 200, 30)).save(folder / f"{split}{i}.png")


def _files(dataset) -> set:
    return {path for path, _ in dataset.samples}


def test_image_folder(tmp_path):
    for split in ("train", "val", "test"):
        _class_folders(tmp_path, split, 1)
    ds = ImageFolder({"root": str(tmp_path), "image_size": 16})
    assert ds.info().num_classes == 2 and ds.info().class_names == ("cat", "dog")
    x, y = ds.train_set()[1]
    assert x.shape == (3, 16, 16) and y == 1
    assert {p.parent.parent.name for p in _files(ds.val_set())} == {"val"}
    assert {p.parent.parent.name for p in _files(ds.test_set())} == {"test"}
    (tmp_path / "test" / "dog" / "b.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"b\.png: cannot read image"):
        [ImageFolder({"root": str(tmp_path), "image_size": 16}).test_set()[i] for i in range(3)]
    with pytest.raises(DataError, match="folder not found"):
        ImageFolder({"root": str(tmp_path / "none")}).check()


def test_image_folder_without_a_val_folder_holds_out_a_seeded_fraction_of_train(tmp_path):
    _class_folders(tmp_path, "train", 10)
    _class_folders(tmp_path, "test", 2)
    params = {"root": str(tmp_path), "image_size": 16, "val_fraction": 0.25}
    ds = ImageFolder(params)
    train, val, test = _files(ds.train_set()), _files(ds.val_set()), _files(ds.test_set())
    assert (len(train), len(val), len(test)) == (15, 5, 4)
    assert not (train & val or train & test or val & test)
    assert train | val == {p for p in (tmp_path / "train").rglob("*.png")}
    assert _files(ImageFolder(params).val_set()) == val
    assert _files(ImageFolder({**params, "split_seed": 3}).val_set()) != val


def test_image_folder_val_dir_empty_ignores_a_val_folder(tmp_path):
    for split in ("train", "val", "test"):
        _class_folders(tmp_path, split, 4)
    ds = ImageFolder({"root": str(tmp_path), "image_size": 16, "val_dir": "", "val_fraction": 0.25})
    assert {p.parent.parent.name for p in _files(ds.val_set())} == {"train"}
    assert len(ds.val_set()) == 2 and len(ds.train_set()) == 6


def test_image_folder_folders_must_differ():
    with pytest.raises(ValueError, match="different folders"):
        ImageFolder.Params(root="x", val_dir="test")


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
