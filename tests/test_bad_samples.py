"""``data.on_bad_sample``: with "error" (the default) a bad sample stops the run with a DataError
naming the file; with "skip" the run goes on without it and reports how many were left out (in
results.json, the report and a warning at the start)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kdengine
from kdengine import DataError
from kdengine.errors import DataWarning
from kdengine.recipe import load_recipe
from kdengine_edges import bsds, folder as edge_folder

from edges_fakes import make_bsds, write_image


@pytest.fixture(autouse=True)
def _fresh_caches():
    bsds.load_split.cache_clear()
    edge_folder._load.cache_clear()
    yield
    bsds.load_split.cache_clear()
    edge_folder._load.cache_clear()


def truncate(path: Path) -> None:
    """Keep the first half of an image file: it opens, but decoding runs out of data."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_mask(path: Path, height: int, width: int) -> None:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 2, :] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


# Each case builds a tiny dataset with one bad sample and returns the recipe's [data] table and
# the name of the file the error must name.


def bsds_missing_mat(root: Path):
    make_bsds(root / "BSDS500")
    (root / "BSDS500" / "groundTruth" / "train" / "0001.mat").unlink()
    return {"name": "bsds500", "params": {"root": str(root / "BSDS500"), "size": 16}}, "0001.mat"


def bsds_unreadable_jpg(root: Path):
    make_bsds(root / "BSDS500")
    (root / "BSDS500" / "images" / "test" / "2000.jpg").write_bytes(b"not a jpeg")
    return {"name": "bsds500", "params": {"root": str(root / "BSDS500"), "size": 16}}, "2000.jpg"


def edge_folder_mismatched_sizes(root: Path):
    for i in range(5):
        write_image(root / "images" / f"im{i}.png", 20, 28, seed=i)
        write_mask(root / "edges" / f"im{i}.png", 20, 28)
    write_mask(root / "edges" / "im1.png", 10, 10)
    params = {"train_images": str(root / "images"), "train_edges": str(root / "edges"), "size": 16,
              "test_fraction": 0.2}
    return {"name": "edge_folder", "params": params}, "im1.png"


def sr_folder_truncated(root: Path):
    rng = np.random.default_rng(0)
    (root / "hr").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / "hr" / f"{i}.png")
    truncate(root / "hr" / "1.png")
    params = {"root": str(root / "hr"), "test_holdout": 1, "patch": 16, "patches_per_image": 2, "tile": 0}
    return {"name": "sr_folder", "params": params}, "1.png"


def image_folder_truncated(root: Path):
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    truncate(root / "train" / "dog" / "2.jpg")
    return {"name": "image_folder", "params": {"root": str(root), "image_size": 16}}, "2.jpg"


EDGES = {"teacher": {"name": "unet", "params": {"encoder": "resnet18", "encoder_depth": 3,
                                                 "decoder_channels": [8, 8, 8]}},
         "loss": [{"name": "weighted_bce", "weight": 0.5}, {"name": "sigmoid_mse", "weight": 0.5}],
         "metric": [{"name": "dice"}]}
SUPERRES = {"teacher": {"name": "attention_srnet", "params": {"blocks": 1, "channels": 4}},
            "loss": [{"name": "l1"}, {"name": "teacher_l1", "weight": 0.5}],
            "metric": [{"name": "psnr_y"}], "eval_batch_size": 1}
CLASSIFICATION = {"teacher": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.25,
                                                                 "cifar_stem": True}},
                  "loss": [{"name": "kl_div", "weight": 0.9}, {"name": "cross_entropy", "weight": 0.1}],
                  "metric": [{"name": "top1"}]}

CASES = {
    "bsds500-missing-mat": (bsds_missing_mat, EDGES),
    "bsds500-unreadable-jpg": (bsds_unreadable_jpg, EDGES),
    "edge_folder-mismatched-sizes": (edge_folder_mismatched_sizes, EDGES),
    "sr_folder-truncated-image": (sr_folder_truncated, SUPERRES),
    "image_folder-truncated-image": (image_folder_truncated, CLASSIFICATION),
}


def recipe_for(data: dict, task: dict, tmp_path: Path, on_bad_sample: str | None) -> dict:
    data = dict(data)
    if on_bad_sample is not None:
        data["on_bad_sample"] = on_bad_sample
    return {
        "run": {"name": "bad", "seed": 0, "output_dir": str(tmp_path / "runs")},
        "data": data,
        "teacher": task["teacher"],
        "student": task["teacher"],
        # one batch holds the whole train split, so a bad training image is always read
        "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": task.get("eval_batch_size", 16),
                  "max_steps_per_epoch": 1, "baseline": False, "optimizer": {"name": "adam", "lr": 1e-3}},
        "loss": task["loss"],
        "metric": task["metric"],
    }


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_sample_is_an_error_naming_the_file_by_default(case, tmp_path, one_thread):
    make, task = CASES[case]
    data, bad_name = make(tmp_path / "data")
    recipe = recipe_for(data, task, tmp_path, on_bad_sample=None)
    assert load_recipe(recipe).data.on_bad_sample == "error"
    with pytest.raises(DataError, match=bad_name):
        kdengine.run(recipe, progress=False)


@pytest.mark.parametrize("case", list(CASES))
def test_skip_leaves_the_bad_sample_out_and_reports_it(case, tmp_path, one_thread):
    make, task = CASES[case]
    data, bad_name = make(tmp_path / "data")
    recipe = recipe_for(data, task, tmp_path, on_bad_sample="skip")
    with pytest.warns(DataWarning, match=rf"left out 1 bad sample\(s\): .*{bad_name}"):
        results = kdengine.run(recipe, progress=False)
    assert results.complete and results.skipped_samples == 1
    assert len(results.skipped_files) == 1 and bad_name in results.skipped_files[0]
    run_dir = Path(results.run_dir)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["skipped_samples"] == 1 and bad_name in saved["skipped_files"][0]
    assert "1 bad sample(s) were left out" in (run_dir / "results.md").read_text()
    assert json.loads((run_dir / "recipe.json").read_text())["data"]["on_bad_sample"] == "skip"


def test_skip_counts_each_bad_sample_once_and_keeps_the_good_ones(tmp_path):
    from kdengine_edges.bsds import BSDS500

    root = make_bsds(tmp_path / "BSDS500", per_split=3)
    (root / "groundTruth" / "train" / "0001.mat").unlink()
    (root / "images" / "val" / "1000.jpg").write_bytes(b"garbage")
    provider = BSDS500({"root": root, "size": 16})
    provider.on_bad_sample = "skip"
    assert len(provider.train_set()) == 2  # 3 train images, 1 bad
    assert len(provider.val_set()) == 2  # 3 val images, 1 bad
    provider.train_set()  # built again: still counted once
    provider.val_set()
    assert len(provider.test_set()) == 3
    skipped = provider.skipped_samples()
    assert len(skipped) == 2
    assert any("0001.mat" in s for s in skipped) and any("1000.jpg" in s for s in skipped)
    # a provider left at the default still stops at the first bad sample
    with pytest.raises(DataError, match="0001.mat"):
        BSDS500({"root": root, "size": 16}).train_set()


def test_a_split_left_empty_by_skipping_says_so(tmp_path, one_thread):
    data, _ = image_folder_truncated(tmp_path / "data")
    for path in (tmp_path / "data" / "test").rglob("*.jpg"):
        path.write_bytes(b"garbage")
    recipe = recipe_for(data, CLASSIFICATION, tmp_path, on_bad_sample="skip")
    with pytest.raises(DataError, match=r"test split .* is empty \(7 bad samples were skipped\)"):
        kdengine.run(recipe, progress=False)


def test_validate_reports_skipped_train_samples(tmp_path, one_thread):
    from kdengine.tools.validate import dry_run

    data, bad_name = edge_folder_mismatched_sizes(tmp_path / "data")
    report = dry_run(recipe_for(data, EDGES, tmp_path, on_bad_sample="skip"))
    assert len(report.skipped) == 1 and bad_name in report.skipped[0]
    assert any(line.startswith("  skipped 1 bad train sample(s)") for line in report.lines())
