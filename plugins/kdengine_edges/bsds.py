"""``bsds500``: the Berkeley Segmentation Dataset 500 in its official layout.

::

    <root>/images/{train,val,test}/<id>.jpg
    <root>/groundTruth/{train,val,test}/<id>.mat   # groundTruth: 1xK cell of structs with
                                                   # fields Segmentation and Boundaries

The official splits are the provider's splits: train on ``train``, choose on ``val``, report
``test``. Images are decoded once per process and kept in memory (uint8, boundaries bit-packed).
Training items are random square crops, flipped and resized to ``size``; the target is the mean
of the annotators (soft) or their consensus. Val and test items are whole images, in their own
orientation, with every annotator, as the benchmark wants; a batch that mixes portrait and
landscape images comes as lists and is predicted one image at a time (see
:func:`kdengine_edges.transforms.collate_edges`).
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from kdengine import DataError, Params
from kdengine import fingerprint_files

from kdengine_edges.provider import EdgeProvider
from kdengine_edges.readers import read_bsds_boundaries, read_rgb
from kdengine_edges.transforms import eval_target, resize_image, resize_label, train_view

Split = Literal["train", "val", "test"]

#: The official archive (Arbelaez et al.), holding BSR/BSDS500/data/{images,groundTruth}.
BSDS_URL = "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"


def split_images(root: Path, split: str) -> list[Path]:
    """The .jpg images of one split, sorted; a missing folder is a DataError naming it."""
    image_dir = root / "images" / split
    gt_dir = root / "groundTruth" / split
    for folder in (image_dir, gt_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: BSDS500 folder not found (expected the official layout "
                            "images/<split>/*.jpg and groundTruth/<split>/*.mat under root)")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".jpg")
    if not images:
        raise DataError(f"{image_dir}: no .jpg images")
    return images


def ground_truth_path(root: Path, split: str, image: Path) -> Path:
    return root / "groundTruth" / split / f"{image.stem}.mat"


class Record:
    """One decoded image and its annotators (bit-packed)."""

    __slots__ = ("image", "packed", "k", "shape", "name")

    def __init__(self, image: torch.Tensor, boundaries: np.ndarray, name: str):
        self.image = image
        self.k = boundaries.shape[0]
        self.shape = boundaries.shape[1:]
        self.packed = np.packbits(boundaries.reshape(self.k, -1), axis=1)
        self.name = name

    def annotators(self) -> torch.Tensor:
        bits = np.unpackbits(self.packed, axis=1, count=self.shape[0] * self.shape[1])
        return torch.from_numpy(bits.reshape(self.k, *self.shape))


def load_record(image_path: Path, mat_path: Path) -> Record:
    """One image and its annotators; any problem is a DataError naming the file."""
    if not mat_path.is_file():
        raise DataError(f"{mat_path}: ground-truth file not found for image {image_path}")
    image = read_rgb(image_path)
    boundaries = read_bsds_boundaries(mat_path)
    if tuple(image.shape[1:]) != boundaries.shape[1:]:
        raise DataError(
            f"{mat_path}: boundaries are {boundaries.shape[1]}x{boundaries.shape[2]} but the "
            f"image {image_path} is {image.shape[1]}x{image.shape[2]}"
        )
    return Record(image, boundaries, image_path.stem)


@lru_cache(maxsize=16)
def load_split(root: str, split: str, skip: bool = False) -> tuple[tuple[Record, ...], tuple[DataError, ...]]:
    """The decoded records of one split, and the bad samples left out (only with ``skip``;
    without it the first bad sample raises its DataError)."""
    records, bad = [], []
    for image_path in split_images(Path(root), split):
        try:
            records.append(load_record(image_path, ground_truth_path(Path(root), split, image_path)))
        except DataError as exc:
            if not skip:
                raise
            bad.append(exc)
    return tuple(records), tuple(bad)


def training_target(annotators: torch.Tensor, mode: str, consensus: float) -> torch.Tensor:
    """1xHxW target from KxHxW binary annotators: their mean, or mean >= consensus."""
    mean = annotators.float().mean(dim=0, keepdim=True)
    if mode == "mean":
        return mean
    return (mean >= consensus - 1e-6).float()


class BSDSTrain(torch.utils.data.Dataset):
    def __init__(self, records, size: int, min_scale: float, target: str, consensus: float,
                 augment: str = "crop_flip"):
        self.records, self.size, self.min_scale, self.augment = records, size, min_scale, augment
        self.target, self.consensus = target, consensus

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = record.image.float() / 255.0
        label = training_target(record.annotators(), self.target, self.consensus)
        return train_view(image, label, self.size, self.min_scale, self.augment)


class BSDSEval(torch.utils.data.Dataset):
    def __init__(self, records, scale: float, target: str, consensus: float):
        self.records, self.scale = records, scale
        self.target, self.consensus = target, consensus

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = record.image.float() / 255.0
        annotators = record.annotators().float()
        if self.scale != 1.0:
            height = max(1, round(image.shape[1] * self.scale))
            width = max(1, round(image.shape[2] * self.scale))
            image = resize_image(image, height, width)
            annotators = resize_label(annotators, height, width)
        mask = training_target(annotators, self.target, self.consensus)
        return image.contiguous(), eval_target(mask, annotators.contiguous())


class BSDS500(EdgeProvider):
    """BSDS500 in the official layout: train on train, choose on val, report test (every annotator)."""

    summary = "Berkeley Segmentation Dataset 500 (official layout, all annotators)"

    class Params(Params):
        root: Path = Field(Path("data/BSDS500"), description="folder holding images/ and groundTruth/")
        size: int = Field(256, ge=16, le=2048, description="side of the square training crops")
        min_scale: float = Field(0.6, gt=0.0, le=1.0,
                                 description="smallest crop side, as a fraction of the short side")
        augment: Literal["crop_flip", "strong"] = Field(
            "crop_flip", description="train views: crop, flip, resize; strong: also a quarter turn and colour jitter")
        target: Literal["mean", "consensus"] = Field(
            "mean", description="training target: mean of annotators (soft) or consensus"
        )
        consensus: float = Field(0.5, gt=0.0, le=1.0,
                                 description="share of annotators needed with target=consensus")
        train_splits: tuple[Split, ...] = ("train",)
        val_splits: tuple[Split, ...] = ("val",)
        test_splits: tuple[Split, ...] = ("test",)
        val_scale: float = Field(1.0, gt=0.0, le=1.0,
                                 description="resolution of the val images (1.0 = native)")
        val_limit: Optional[int] = Field(None, ge=1, description="use the first N val images only")
        test_scale: float = Field(1.0, gt=0.0, le=1.0,
                                  description="1.0 = native resolution (the benchmark)")
        test_limit: Optional[int] = Field(None, ge=1, description="use the first N test images only")
        download: bool = Field(False, description="fetch the official archive if root is missing")

        @field_validator("train_splits", "val_splits", "test_splits")
        @classmethod
        def _not_empty(cls, value):
            if not value:
                raise ValueError("give at least one split")
            return value

        @model_validator(mode="after")
        def _disjoint(self):
            roles = {"train_splits": self.train_splits, "val_splits": self.val_splits,
                     "test_splits": self.test_splits}
            for split in ("train", "val", "test"):
                users = [name for name, splits in roles.items() if split in splits]
                if len(users) > 1:
                    raise ValueError(f"the '{split}' split is in both {users[0]} and {users[1]}; "
                                     "train, val and test must not share images")
            return self

        def used_splits(self) -> tuple[str, ...]:
            return self.train_splits + self.val_splits + self.test_splits

    def _folders(self) -> list[Path]:
        root = self.params.root
        splits = self.params.used_splits()
        return [root / kind / split for split in splits for kind in ("images", "groundTruth")]

    def check(self) -> None:
        missing = [f for f in self._folders() if not f.is_dir()]
        if missing and self.params.download:
            download_bsds500(self.params.root)
            missing = [f for f in self._folders() if not f.is_dir()]
        if missing:
            raise DataError(
                f"{missing[0]}: BSDS500 folder not found. Point data.params.root at a folder "
                "holding images/{train,val,test} and groundTruth/{train,val,test}, or set "
                f"data.params.download = true to fetch {BSDS_URL}"
            )

    def _records(self, splits) -> tuple[Record, ...]:
        self.check()
        root = str(self.params.root.resolve())
        records = []
        for split in splits:
            loaded, bad = load_split(root, split, self.on_bad_sample == "skip")
            for error in bad:
                self.bad_sample(error)
            records += loaded
        return tuple(records)

    def fingerprint(self) -> dict:
        """Every image and ground-truth file of the splits this recipe uses."""
        root = self.params.root
        files = []
        for split in self.params.used_splits():
            for image in split_images(root, split):
                files.append(image)
                mat = ground_truth_path(root, split, image)
                if mat.is_file():
                    files.append(mat)
        return fingerprint_files(files, root)

    def split_files(self, split: str) -> list[Path]:
        """The images of the official splits this recipe gives the role ``split``."""
        splits = {"train": self.params.train_splits, "val": self.params.val_splits, "test": self.params.test_splits}
        return [image for name in splits[split] for image in split_images(self.params.root, name)]

    def train_set(self) -> torch.utils.data.Dataset:
        p = self.params
        return BSDSTrain(self._records(p.train_splits), p.size, p.min_scale, p.target, p.consensus, p.augment)

    def _evaluation(self, splits, limit: int | None, scale: float) -> BSDSEval:
        records = self._records(splits)[:limit]
        return BSDSEval(records, scale, self.params.target, self.params.consensus)

    def val_set(self) -> torch.utils.data.Dataset:
        p = self.params
        return self._evaluation(p.val_splits, p.val_limit, p.val_scale)

    def test_set(self) -> torch.utils.data.Dataset:
        p = self.params
        return self._evaluation(p.test_splits, p.test_limit, p.test_scale)


def download_bsds500(root: Path, url: str = BSDS_URL) -> None:
    """Fetch and unpack the official archive so that ``root/images/train`` exists."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        archive = Path(tmp) / "BSR_bsds500.tgz"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(
                f"{root}: BSDS500 is missing and could not be downloaded from {url} ({exc}). "
                "Download the archive by hand, unpack it and point data.params.root at its "
                "BSR/BSDS500/data folder."
            ) from exc
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{archive}: could not unpack the BSDS500 archive ({exc})") from exc
        data = Path(tmp) / "BSR" / "BSDS500" / "data"
        if not (data / "images").is_dir():
            raise DataError(f"{url}: the archive has no BSR/BSDS500/data/images folder")
        root.mkdir(parents=True, exist_ok=True)
        for name in ("images", "groundTruth"):
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(data / name), str(target))
