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


def test_skimage_sr_train_patches_and_full_val_and_test_images():
    provider = SkimageSR({"scale": 4, "patch": 64, "patches_per_image": 2, "train_images": ["coffee", "camera"],
                          "val_images": ["coins"], "test_images": ["astronaut"]})
    provider.check()
    assert provider.info().scale == 4 and provider.info().task == "superres"
    train = provider.train_set()
    assert len(train) == 4
    lr, hr = train[3]
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 64, 64)
    lr, hr = provider.test_set()[0]
    assert hr.shape == (3, 512, 512) and lr.shape == (3, 128, 128)
    lr, hr = provider.val_set()[0]
    assert hr.shape == (3, 300, 384) and lr.shape == (3, 75, 96)  # coins, mod-cropped to the scale


def test_skimage_sr_default_splits_share_no_photograph():
    p = SkimageSR.Params()
    assert p.test_images == ["astronaut", "motorcycle"] and p.val_images == ["coins", "moon"]
    assert not (set(p.train_images) & set(p.val_images) or set(p.train_images) & set(p.test_images)
                or set(p.val_images) & set(p.test_images))
    provider = SkimageSR({"patch": 32})
    assert provider.val_set().names == ["coins", "moon"] and provider.test_set().names == ["astronaut", "motorcycle"]


def test_skimage_sr_params_are_checked():
    with pytest.raises(ValidationError, match="unknown image"):
        SkimageSR({"train_images": ["lena"]})
    with pytest.raises(ValidationError, match="both train and test"):
        SkimageSR({"train_images": ["astronaut"], "test_images": ["astronaut"]})
    with pytest.raises(ValidationError, match="both train and val"):
        SkimageSR({"train_images": ["coins"]})
    with pytest.raises(ValidationError, match="both val and test"):
        SkimageSR({"val_images": ["astronaut"]})
    with pytest.raises(ValidationError, match="multiple of scale"):
        SkimageSR({"patch": 150})


def test_train_patches_are_deterministic_under_a_seed():
    provider = SkimageSR({"patch": 32, "train_images": ["coffee"], "test_images": ["astronaut"]})
    train = provider.train_set()
    torch.manual_seed(3)
    first = [train[i][1] for i in range(4)]
    torch.manual_seed(3)
    second = [train[i][1] for i in range(4)]
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    assert not torch.equal(first[0], first[1])  # different random crops
    lr_a, _ = provider.test_set()[0]
    lr_b, _ = provider.test_set()[0]
    torch.testing.assert_close(lr_a, lr_b)


def _hr_folder(folder, count, rng, size=(50, 70)):
    for i in range(count):
        _write(folder / f"{i}.png", _photo(rng, *size))


def test_sr_folder_holds_out_test_and_val_and_patch_lr_matches_degradation(tmp_path):
    _hr_folder(tmp_path / "hr", 4, np.random.default_rng(0))
    provider = SRFolder({"root": str(tmp_path / "hr"), "test_holdout": 1, "val_fraction": 0.3, "patch": 32,
                         "augment": False, "blur_sigma": 0.8})
    provider.check()
    assert len(provider.train_set()) == 2 * 16
    lr, hr = provider.train_set()[0]
    torch.testing.assert_close(lr, degrade(hr, 4, 0.8))
    lr, hr = provider.test_set()[0]
    assert hr.shape == (3, 48, 68) and lr.shape == (3, 12, 17)  # mod-cropped to the scale
    assert provider.test_set().names == ["3"] and len(provider.val_set()) == 1


def test_sr_folder_splits_are_disjoint_and_val_is_seeded(tmp_path):
    _hr_folder(tmp_path / "hr", 12, np.random.default_rng(0), size=(36, 36))
    params = {"root": str(tmp_path / "hr"), "test_holdout": 2, "val_fraction": 0.2, "patch": 32}

    def names(provider):
        return {k: sorted(p.name for p in v) for k, v in provider._split.items()}

    split = names(SRFolder(params))
    assert split["test"] == ["8.png", "9.png"]  # the last two by name: 0, 1, 10, 11, 2, ..., 9
    assert len(split["val"]) == 2 and len(split["train"]) == 8
    assert not set(split["train"]) & set(split["val"])
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == {f"{i}.png" for i in range(12)}
    assert names(SRFolder(params))["val"] == split["val"]
    assert names(SRFolder({**params, "split_seed": 1}))["val"] != split["val"]
    provider = SRFolder(params)
    assert len(provider.train_set()) == 8 * 16 and sorted(provider.val_set().names) == [n[:-4] for n in split["val"]]


def test_sr_folder_reads_val_and_test_folders(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(2):
        _write(tmp_path / "train" / f"{i}.jpg", _photo(rng, 40, 40))
    _hr_folder(tmp_path / "val", 3, rng, size=(36, 44))
    _paired_tree(tmp_path / "Set5", rng)
    provider = SRFolder({"root": str(tmp_path / "train"), "val_root": str(tmp_path / "val"),
                         "test_root": str(tmp_path / "Set5"), "patch": 32})
    provider.check()
    assert len(provider.train_set()) == 2 * 16
    assert len(provider.val_set()) == 3 and provider.val_set()[0][1].shape == (3, 36, 44)
    assert len(provider.test_set()) == 2 and sorted(provider.test_set().names) == ["baby", "bird"]


def test_sr_folder_roots_must_differ(tmp_path):
    with pytest.raises(ValidationError, match="different folders"):
        SRFolder({"root": str(tmp_path), "test_root": str(tmp_path)})


PAIRS = {"bird": (34, 41), "baby": (48, 40), "head": (40, 40), "woman": (44, 36), "butterfly": (36, 36)}


def _paired_tree(root, rng, names=("bird", "baby")):
    for name in names:
        h, w = PAIRS[name]
        hr = _photo(rng, h, w)
        _write(root / "HR" / f"{name}.png", hr)
        lr = (degrade(torch.from_numpy(hr[: h - h % 4, : w - w % 4]).permute(2, 0, 1) / 255.0, 4) * 255)
        _write(root / "LR_bicubic" / "X4" / f"{name}x4.png", lr.round().byte().permute(1, 2, 0).numpy())


def test_sr_paired_reads_a_set5_style_tree_and_holds_out_val_and_test(tmp_path):
    _paired_tree(tmp_path / "Set5", np.random.default_rng(1), names=PAIRS)
    provider = SRPaired({"root": str(tmp_path / "Set5"), "patch": 16, "test_holdout": 2, "val_fraction": 0.3})
    provider.check()
    test = provider.test_set()
    assert test.names == ["head", "woman"]  # the last two by name
    shapes = sorted((tuple(lr.shape), tuple(hr.shape)) for lr, hr in test)
    assert shapes == [((3, 10, 10), (3, 40, 40)), ((3, 11, 9), (3, 44, 36))]
    train, val = provider.train_set(), provider.val_set()
    assert len(val.names) == 1 and len(train.names) == 2
    lr, hr = train[0]
    assert lr.shape == (3, 4, 4) and hr.shape == (3, 16, 16)
    inputs, targets = collate([test[0], test[1]])
    assert isinstance(inputs, list) and len(targets) == 2  # different sizes stay a list


def test_sr_paired_never_trains_on_its_evaluation_pairs(tmp_path):
    _paired_tree(tmp_path / "train", np.random.default_rng(1), names=PAIRS)
    _paired_tree(tmp_path / "Set5", np.random.default_rng(2), names=("bird", "baby"))
    held = SRPaired({"root": str(tmp_path / "train"), "patch": 16, "test_holdout": 1, "val_fraction": 0.25})
    assert not set(held.train_set().names) & (set(held.val_set().names) | set(held.test_set().names))
    assert len(held.train_set().names) + len(held.val_set().names) + len(held.test_set().names) == len(PAIRS)
    # with a test tree of its own, root's pairs are train and val only
    given = SRPaired({"root": str(tmp_path / "train"), "test_root": str(tmp_path / "Set5"), "patch": 16})
    assert len(given.train_set().names) == 4 and len(given.val_set().names) == 1
    assert sorted(given.test_set().names) == ["baby", "bird"]
    test_hr = [hr for _, hr in given.test_set().pairs]
    for split in (given.train_set(), given.val_set()):
        assert not any(np.array_equal(hr, t) for _, hr in split.pairs for t in test_hr)


def test_sr_paired_of_a_benchmark_tree_alone_says_where_it_belongs(tmp_path):
    _paired_tree(tmp_path / "Set5", np.random.default_rng(1), names=PAIRS)
    with pytest.raises(DataError, match="need more than test_holdout=5"):
        SRPaired({"root": str(tmp_path / "Set5")}).train_set()


def test_paired_set_reads_every_pair_of_a_benchmark_tree(tmp_path):
    from kdengine_superres.data import paired_set

    _paired_tree(tmp_path / "Set5", np.random.default_rng(1), names=PAIRS)
    assert sorted(paired_set(tmp_path / "Set5", 4).names) == sorted(PAIRS)


def test_missing_folders_and_bad_files_are_data_errors_naming_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        SRFolder({"root": str(tmp_path / "nowhere")}).check()
    with pytest.raises(DataError, match="LR_bicubic"):
        (tmp_path / "Set5" / "HR").mkdir(parents=True)
        SRPaired({"root": str(tmp_path / "Set5")}).check()
    folder = tmp_path / "broken"
    _write(folder / "good.png", _photo(np.random.default_rng(3), 40, 40))
    (folder / "bad.png").write_bytes(b"not an image at all")
    _hr_folder(tmp_path / "val", 1, np.random.default_rng(4))
    provider = SRFolder({"root": str(folder), "val_root": str(tmp_path / "val"), "test_holdout": 1, "patch": 32})
    with pytest.raises(DataError, match="bad.png"):
        provider.train_set()  # bad.png sorts first, so it is a train image


def test_missing_lr_partner_is_named(tmp_path):
    _paired_tree(tmp_path / "Set5", np.random.default_rng(4), names=PAIRS)
    (tmp_path / "Set5" / "LR_bicubic" / "X4" / "womanx4.png").unlink()
    with pytest.raises(DataError, match="womanx4"):
        SRPaired({"root": str(tmp_path / "Set5"), "test_holdout": 1}).test_set()


def test_image_smaller_than_the_patch_is_named(tmp_path):
    for i in range(2):
        _write(tmp_path / "hr" / f"small{i}.png", _photo(np.random.default_rng(i), 20, 20))
    _hr_folder(tmp_path / "val", 1, np.random.default_rng(4))
    with pytest.raises(DataError, match="small0.png.*smaller"):
        SRFolder({"root": str(tmp_path / "hr"), "val_root": str(tmp_path / "val"), "test_holdout": 1,
                  "patch": 32}).train_set()


def test_tiled_prediction_equals_the_full_pass_for_a_local_model():
    # A 3x3 conv + pixel shuffle sees 1 LR px of context: with 8 px overlap the tiles agree exactly.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 48, 3, padding=1), torch.nn.PixelShuffle(4))
    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(tiled_predict(model, x, 4, tile=24, overlap=4), model(x))


def test_provider_predict_handles_lists_of_images():
    provider = SkimageSR({"tile": 16, "tile_overlap": 4, "train_images": ["coffee"], "test_images": ["astronaut"]})
    model = torch.nn.Upsample(scale_factor=4, mode="nearest")
    outs = provider.predict(model, [torch.rand(3, 20, 30), torch.rand(3, 10, 12)])
    assert [tuple(o.shape) for o in outs] == [(3, 80, 120), (3, 40, 48)]


def test_sr_folder_extra_train_roots_join_train_only(tmp_path):
    rng = np.random.default_rng(3)
    _hr_folder(tmp_path / "bsds", 6, rng)
    for i in range(3):
        _write(tmp_path / "mcmaster" / f"{i}.tif", _photo(rng, 40, 40))
    params = {"root": str(tmp_path / "bsds"), "test_holdout": 1, "val_fraction": 0.2, "patch": 32,
              "patches_per_image": 1}
    alone = SRFolder(params)
    both = SRFolder({**params, "extra_train_roots": [str(tmp_path / "mcmaster")]})
    assert both._split["val"] == alone._split["val"] and both._split["test"] == alone._split["test"]
    assert len(both.train_set()) == len(alone.train_set()) + 3
    assert {p.parent.name for p in both._split["train"]} == {"bsds", "mcmaster"}
    assert both.fingerprint() != alone.fingerprint()
    with pytest.raises(DataError, match="nowhere: HR image folder not found"):
        SRFolder({**params, "extra_train_roots": [str(tmp_path / "nowhere")]}).check()
    with pytest.raises(ValidationError, match="different folders"):
        SRFolder({**params, "extra_train_roots": [str(tmp_path / "bsds")]})
