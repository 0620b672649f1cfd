"""The data fingerprint in ``environment.json``: a sha256 over the files a dataset reads (relative
paths, sizes, contents), or a description of generated and bundled data; a changed file changes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import kdengine
from kdengine import fingerprint_files
from kdengine.errors import DataWarning
from kdengine.io.rundir import RunFolder
from kdengine_classification.data import Cifar100, Digits, ImageFolder
from kdengine_edges.bsds import BSDS500
from kdengine_edges.folder import EdgeFolder
from kdengine_edges.synthetic_data import SyntheticEdges
from kdengine_superres.data import SkimageSR, SRFolder, SRPaired

from edges_fakes import make_bsds, write_image


def photo(path: Path, height: int, width: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def bsds(root: Path):
    make_bsds(root / "BSDS500")
    return BSDS500({"root": root / "BSDS500", "size": 16}), root / "BSDS500" / "groundTruth" / "test" / "2000.mat"


def edge_folder(root: Path):
    for i in range(3):
        write_image(root / "images" / f"im{i}.png", 12, 12, seed=i)
        write_image(root / "edges" / f"im{i}.png", 12, 12, seed=10 + i)
    provider = EdgeFolder({"train_images": root / "images", "train_edges": root / "edges", "size": 16})
    return provider, root / "edges" / "im1.png"


def sr_folder(root: Path):
    for i in range(3):
        photo(root / "hr" / f"{i}.png", 20, 20, seed=i)
    return SRFolder({"root": str(root / "hr"), "test_holdout": 1, "patch": 16}), root / "hr" / "2.png"


def sr_paired(root: Path):
    for i, name in enumerate(("baby", "bird", "head")):  # train, val and test pairs
        photo(root / "pairs" / "HR" / f"{name}.png", 16, 16, seed=i)
        photo(root / "pairs" / "LR_bicubic" / "X4" / f"{name}x4.png", 4, 4, seed=10 + i)
    provider = SRPaired({"root": str(root / "pairs"), "test_holdout": 1, "patch": 16})
    return provider, root / "pairs" / "LR_bicubic" / "X4" / "birdx4.png"


def image_folder(root: Path):
    for split in ("train", "val", "test"):
        for label in ("cat", "dog"):
            photo(root / split / label / "a.png", 8, 8, seed=len(split) + len(label))
    return ImageFolder({"root": str(root), "image_size": 8}), root / "val" / "dog" / "a.png"


def cifar100(root: Path):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(name.encode() * 100)
    return Cifar100({"root": str(root)}), folder / "meta"


def relocated(provider, old: Path, new: Path):
    """The same provider with every path parameter under ``old`` moved under ``new``."""
    values = provider.params.model_dump()
    for key, value in values.items():
        if isinstance(value, Path) and value.is_relative_to(old):
            values[key] = new / value.relative_to(old)
    return type(provider)(values)


FILE_BASED = {"bsds500": bsds, "edge_folder": edge_folder, "sr_folder": sr_folder, "sr_paired": sr_paired,
              "image_folder": image_folder, "cifar100": cifar100}


@pytest.mark.parametrize("name", list(FILE_BASED))
def test_fingerprint_changes_when_one_data_file_changes(name, tmp_path):
    provider, one_file = FILE_BASED[name](tmp_path / "data")
    first = provider.fingerprint()
    assert set(first) == {"sha256", "files", "bytes", "root"} and first["files"] >= 2
    assert provider.fingerprint() == first  # deterministic
    # the same files in another place: the same hash (paths are relative)
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    moved = relocated(provider, tmp_path / "data", tmp_path / "moved").fingerprint()
    assert moved["sha256"] == first["sha256"] and moved["root"] != first["root"]
    data = one_file.read_bytes()
    one_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of one file
    changed = provider.fingerprint()
    assert changed["sha256"] != first["sha256"]
    assert changed["files"] == first["files"] and changed["bytes"] == first["bytes"]


def test_fingerprint_files_uses_relative_paths_sizes_and_contents(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        (tmp_path / folder / "sub" / "x.bin").write_bytes(b"12345")
        (tmp_path / folder / "y.bin").write_bytes(b"678")
    a = fingerprint_files([tmp_path / "a" / "y.bin", tmp_path / "a" / "sub" / "x.bin"], tmp_path / "a")
    b = fingerprint_files([tmp_path / "b" / "sub" / "x.bin", tmp_path / "b" / "y.bin"], tmp_path / "b")
    assert a["sha256"] == b["sha256"] and a["files"] == 2 and a["bytes"] == 8  # order and place do not matter
    (tmp_path / "b" / "y.bin").rename(tmp_path / "b" / "z.bin")
    renamed = fingerprint_files([tmp_path / "b" / "sub" / "x.bin", tmp_path / "b" / "z.bin"], tmp_path / "b")
    assert renamed["sha256"] != a["sha256"]  # a renamed file is different data
    (tmp_path / "b" / "z.bin").write_bytes(b"6789")
    grown = fingerprint_files([tmp_path / "b" / "sub" / "x.bin", tmp_path / "b" / "z.bin"], tmp_path / "b")
    assert grown["sha256"] != renamed["sha256"] and grown["bytes"] == 9


def test_generated_and_bundled_data_describe_what_makes_them():
    synthetic = SyntheticEdges({"seed": 3, "size": 32}).fingerprint()
    assert synthetic.startswith("synthetic_edges:") and "seed=3" in synthetic and "size=32" in synthetic
    assert SyntheticEdges({"seed": 4, "size": 32}).fingerprint() != synthetic
    digits = Digits({"image_size": 8, "split_seed": 1}).fingerprint()
    assert "scikit-learn" in digits and "split_seed=1" in digits and "image_size=8" in digits
    skimage = SkimageSR({"test_images": ["astronaut"]}).fingerprint()
    assert "scikit-image" in skimage and "astronaut" in skimage


def test_environment_json_records_the_fingerprint(tmp_path, one_thread):
    provider, _ = image_folder(tmp_path / "data")
    recipe = {
        "run": {"name": "fingerprint", "output_dir": str(tmp_path / "runs")},
        "data": {"name": "image_folder", "params": {"root": str(tmp_path / "data"), "image_size": 8}},
        "teacher": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True}},
        "student": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True}},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 1, "baseline": False},
        "loss": [{"name": "cross_entropy"}],
        "metric": [{"name": "top1"}],
    }
    results = kdengine.run(recipe, progress=False)
    run_dir = Path(results.run_dir)
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["data_fingerprint"] == json.loads(json.dumps(provider.fingerprint()))
    assert env["data_fingerprint"]["files"] == 6  # train, val and test: two images each

    # resuming on data that changed since the run started says so
    fake_accelerator = SimpleNamespace(is_main_process=True)
    RunFolder.reopen(run_dir, fake_accelerator, provider=provider)  # unchanged: no warning
    photo(tmp_path / "data" / "train" / "cat" / "a.png", 8, 8, seed=99)
    with pytest.warns(DataWarning, match="differs from the data this run started with"):
        RunFolder.reopen(run_dir, fake_accelerator, provider=provider)


def test_digits_run_records_its_description(tiny_recipe, tmp_path, one_thread):
    tiny_recipe["train"]["baseline"] = False
    results = kdengine.run(tiny_recipe, progress=False, output_dir=tmp_path)
    env = json.loads((Path(results.run_dir) / "environment.json").read_text())
    assert env["data_fingerprint"].startswith("digits (scikit-learn")
