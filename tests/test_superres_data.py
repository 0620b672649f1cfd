"""Super-resolution datasets: degradation, patches, determinism, paired folders, bad files, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from kdengine import DataError
from kdengine_superres.data import SkimageSR, SRFolder, SRPaired, collate
from kdengine_superres.degrade import degrade, gaussian_blur
from kdengine_superres.tiling import tiled_predict


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _photo(rng, height, width):
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_degrade_shapes_range_and_blur():
    hr = torch.rand(3, 32, 48)
    lr = degrade(hr, 4, blur_sigma=1.0)
    assert lr.shape == (3, 8, 12) and lr.min() >= 0 and lr.max() <= 1
    assert torch.allclose(lr * 255, torch.round(lr * 255), atol=1e-4)  # 8-bit levels
    assert not torch.allclose(lr, degrade(hr, 4, blur_sigma=0.0))
    flat = torch.full((3, 16, 16), 0.5)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)  # the kernel sums to one
    with pytest.raises(ValueError, match="multiple"):
        degrade(torch.rand(3, 30, 32), 4)


def test_skimage_sr_train_patches_and_full_eval_images():
    provider = SkimageSR({"scale": 4, "patch": 64, "patches_per_image": 2,
                          "train_images": ["coffee", "camera"], "eval_images": ["astronaut"]})
    provider.check()
    assert provider.info().scale == 4 and provider.info().task == "superres"
    train = provider.train_set()
    assert len(train) == 4
    lr, hr = train[3]
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 64, 64)
    lr, hr = provider.eval_set()[0]
    assert hr.shape == (3, 512, 512) and lr.shape == (3, 128, 128)


def test_skimage_sr_params_are_checked():
    with pytest.raises(ValidationError, match="unknown image"):
        SkimageSR({"train_images": ["lena"]})
    with pytest.raises(ValidationError, match="both train and eval"):
        SkimageSR({"train_images": ["astronaut"], "eval_images": ["astronaut"]})
    with pytest.raises(ValidationError, match="multiple of scale"):
        SkimageSR({"patch": 150})


def test_train_patches_are_deterministic_under_a_seed():
    provider = SkimageSR({"patch": 32, "train_images": ["coffee"], "eval_images": ["astronaut"]})
    train = provider.train_set()
    torch.manual_seed(3)
    first = [train[i][1] for i in range(4)]
    torch.manual_seed(3)
    second = [train[i][1] for i in range(4)]
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    assert not torch.equal(first[0], first[1])  # different random crops
    lr_a, _ = provider.eval_set()[0]
    lr_b, _ = provider.eval_set()[0]
    torch.testing.assert_close(lr_a, lr_b)


def test_sr_folder_holdout_and_patch_lr_matches_degradation(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        _write(tmp_path / "hr" / f"{i}.png", _photo(rng, 50, 70))
    provider = SRFolder({"root": str(tmp_path / "hr"), "holdout": 1, "patch": 32, "augment": False,
                         "blur_sigma": 0.8})
    provider.check()
    assert len(provider.train_set()) == 3 * 16
    lr, hr = provider.train_set()[0]
    torch.testing.assert_close(lr, degrade(hr, 4, 0.8))
    lr, hr = provider.eval_set()[0]
    assert hr.shape == (3, 48, 68) and lr.shape == (3, 12, 17)  # mod-cropped to the scale


def _paired_tree(root, rng, names=("bird", "baby")):
    for name, (h, w) in zip(names, ((34, 41), (48, 40))):
        hr = _photo(rng, h, w)
        _write(root / "HR" / f"{name}.png", hr)
        lr = (degrade(torch.from_numpy(hr[: h - h % 4, : w - w % 4]).permute(2, 0, 1) / 255.0, 4) * 255)
        _write(root / "LR_bicubic" / "X4" / f"{name}x4.png", lr.round().byte().permute(1, 2, 0).numpy())


def test_sr_paired_reads_a_set5_style_tree(tmp_path):
    _paired_tree(tmp_path / "Set5", np.random.default_rng(1))
    provider = SRPaired({"root": str(tmp_path / "Set5"), "patch": 16})
    provider.check()
    eval_set = provider.eval_set()
    assert len(eval_set) == 2
    shapes = sorted((tuple(lr.shape), tuple(hr.shape)) for lr, hr in eval_set)
    assert shapes == [((3, 8, 10), (3, 32, 40)), ((3, 12, 10), (3, 48, 40))]
    lr, hr = provider.train_set()[0]
    assert lr.shape == (3, 4, 4) and hr.shape == (3, 16, 16)
    inputs, targets = collate([eval_set[0], eval_set[1]])
    assert isinstance(inputs, list) and len(targets) == 2  # different sizes stay a list


def test_sr_folder_uses_a_paired_eval_root(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(2):
        _write(tmp_path / "train" / f"{i}.jpg", _photo(rng, 40, 40))
    _paired_tree(tmp_path / "Set5", rng)
    provider = SRFolder({"root": str(tmp_path / "train"), "eval_root": str(tmp_path / "Set5"), "patch": 32})
    provider.check()
    assert len(provider.train_set()) == 2 * 16
    assert len(provider.eval_set()) == 2


def test_missing_folders_and_bad_files_are_data_errors_naming_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        SRFolder({"root": str(tmp_path / "nowhere")}).check()
    with pytest.raises(DataError, match="LR_bicubic"):
        (tmp_path / "Set5" / "HR").mkdir(parents=True)
        SRPaired({"root": str(tmp_path / "Set5")}).check()
    folder = tmp_path / "broken"
    _write(folder / "good.png", _photo(np.random.default_rng(3), 40, 40))
    (folder / "bad.png").write_bytes(b"not an image at all")
    provider = SRFolder({"root": str(folder), "holdout": 1, "patch": 32})
    with pytest.raises(DataError, match="bad.png"):
        provider.train_set()  # bad.png sorts first, so it is a train image


def test_missing_lr_partner_is_named(tmp_path):
    _paired_tree(tmp_path / "Set5", np.random.default_rng(4))
    (tmp_path / "Set5" / "LR_bicubic" / "X4" / "babyx4.png").unlink()
    with pytest.raises(DataError, match="babyx4"):
        SRPaired({"root": str(tmp_path / "Set5")}).eval_set()


def test_image_smaller_than_the_patch_is_named(tmp_path):
    for i in range(2):
        _write(tmp_path / "hr" / f"small{i}.png", _photo(np.random.default_rng(i), 20, 20))
    with pytest.raises(DataError, match="small0.png.*smaller"):
        SRFolder({"root": str(tmp_path / "hr"), "holdout": 1, "patch": 32}).train_set()


def test_tiled_prediction_equals_the_full_pass_for_a_local_model():
    # A 3x3 conv + pixel shuffle sees 1 LR px of context: with 8 px overlap the tiles agree exactly.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 48, 3, padding=1), torch.nn.PixelShuffle(4))
    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(tiled_predict(model, x, 4, tile=24, overlap=4), model(x))


def test_provider_predict_handles_lists_of_images():
    provider = SkimageSR({"tile": 16, "tile_overlap": 4, "train_images": ["coffee"], "eval_images": ["astronaut"]})
    model = torch.nn.Upsample(scale_factor=4, mode="nearest")
    outs = provider.predict(model, [torch.rand(3, 20, 30), torch.rand(3, 10, 12)])
    assert [tuple(o.shape) for o in outs] == [(3, 80, 120), (3, 40, 48)]
