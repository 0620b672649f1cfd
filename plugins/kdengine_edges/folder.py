"""``edge_folder``: your own images and edge masks, paired by file name.

::

    <train_images>/<name>.<jpg|png|...>    <train_edges>/<name>.<png|...>   (white = edge)

The test split is its own pair of folders, or, when those are not given, the last
``test_fraction`` of the training pairs (sorted by name). The val split is its own pair of
folders too, or a ``val_fraction`` of the remaining training pairs drawn under ``split_seed``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import Field, model_validator

from kdengine import DataError, Params, fraction_count, holdout
from kdengine import fingerprint_files

from kdengine_edges.provider import EdgeProvider
from kdengine_edges.readers import IMAGE_SUFFIXES, read_gray, read_rgb
from kdengine_edges.transforms import eval_target, train_view


def pair_files(images: Path, edges: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask) pairs by file name, sorted; the mask is None when the image has none."""
    for folder in (images, edges):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
    masks = {p.stem: p for p in edges.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = [(image, masks.get(image.stem))
             for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)]
    if not pairs:
        raise DataError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return pairs


def load_pair(image_path: Path, mask_path: Path | None, edges: Path, soft: bool, threshold: float):
    """One image and its mask; any problem is a DataError naming the file."""
    if mask_path is None:
        raise DataError(f"{image_path}: no edge mask named {image_path.stem}.* in {edges}")
    image = read_rgb(image_path)
    mask = torch.from_numpy(read_gray(mask_path)).float()[None] / 255.0
    if tuple(image.shape[1:]) != tuple(mask.shape[1:]):
        raise DataError(
            f"{mask_path}: edge mask is {mask.shape[1]}x{mask.shape[2]} but the image "
            f"{image_path} is {image.shape[1]}x{image.shape[2]}"
        )
    if not soft:
        mask = (mask >= threshold).float()
    return image, mask


@lru_cache(maxsize=8)
def _load(images: str, edges: str, soft: bool, threshold: float, skip: bool = False):
    """The pairs of two folders, each as ``((image, mask), image file)``, and the bad ones left out
    (only with ``skip``; without it the first bad pair raises its DataError)."""
    items, bad = [], []
    for image_path, mask_path in pair_files(Path(images), Path(edges)):
        try:
            items.append((load_pair(image_path, mask_path, Path(edges), soft, threshold), image_path))
        except DataError as exc:
            if not skip:
                raise
            bad.append(exc)
    return tuple(items), tuple(bad)


def _pairs(split: list) -> list:
    """The (image, mask) pairs of a split, without their files."""
    return [pair for pair, _ in split]


class FolderTrain(torch.utils.data.Dataset):
    def __init__(self, items, size: int, min_scale: float, augment: str = "crop_flip"):
        self.items, self.size, self.min_scale, self.augment = items, size, min_scale, augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, mask = self.items[index]
        return train_view(image.float() / 255.0, mask, self.size, self.min_scale, self.augment)


class FolderEval(torch.utils.data.Dataset):
    def __init__(self, items, threshold: float):
        self.items, self.threshold = items, threshold

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, mask = self.items[index]
        return image.float() / 255.0, eval_target(mask, (mask >= self.threshold).float())


class EdgeFolder(EdgeProvider):
    """Images and edge masks (same name, same size) from folders you name."""

    summary = "your own images + edge-mask folders, paired by file name"

    class Params(Params):
        train_images: Path
        train_edges: Path
        val_images: Optional[Path] = None
        val_edges: Optional[Path] = None
        val_fraction: float = Field(0.1, gt=0.0, lt=1.0,
                                    description="held out at random when no val folders are given")
        split_seed: int = Field(0, description="seed of the val hold-out (fixed across run seeds)")
        test_images: Optional[Path] = None
        test_edges: Optional[Path] = None
        test_fraction: float = Field(0.1, gt=0.0, lt=1.0,
                                     description="held out (last by name) when no test folders are given")
        size: int = Field(256, ge=16, le=2048, description="side of the square training crops")
        min_scale: float = Field(0.6, gt=0.0, le=1.0)
        augment: Literal["crop_flip", "strong"] = Field(
            "crop_flip", description="train views: crop, flip, resize; strong: also a quarter turn and colour jitter")
        soft: bool = Field(False, description="keep grey mask values as soft targets")
        threshold: float = Field(0.5, gt=0.0, le=1.0, description="mask value (0-1) of an edge")

        @model_validator(mode="after")
        def _both_or_neither(self):
            for split in ("val", "test"):
                if (getattr(self, f"{split}_images") is None) != (getattr(self, f"{split}_edges") is None):
                    raise ValueError(f"give both {split}_images and {split}_edges, or neither")
            given = [p.resolve() for p in (self.train_images, self.val_images, self.test_images) if p is not None]
            if len(set(given)) != len(given):
                raise ValueError("train_images, val_images and test_images must be different folders")
            return self

        def folder_pairs(self) -> list[tuple[Path, Path]]:
            """The (images, edges) folders given, train first."""
            pairs = [(self.train_images, self.train_edges), (self.val_images, self.val_edges),
                     (self.test_images, self.test_edges)]
            return [(images, edges) for images, edges in pairs if images is not None]

    def check(self) -> None:
        for pair in self.params.folder_pairs():
            for folder in pair:
                if not folder.is_dir():
                    raise DataError(f"{folder}: folder not found")

    def _items(self, images: Path, edges: Path):
        p = self.params
        items, bad = _load(str(images.resolve()), str(edges.resolve()), p.soft, p.threshold,
                           self.on_bad_sample == "skip")
        for error in bad:
            self.bad_sample(error)
        return items

    def fingerprint(self) -> dict:
        """Every image and edge mask of the train (and val and test) folders."""
        files = []
        for images, edges in self.params.folder_pairs():
            files += [f for pair in pair_files(images, edges) for f in pair if f is not None]
        return fingerprint_files(files)

    def split_files(self, split: str) -> list[Path]:
        """The image files of a split, held-out ones included: a transfer set may hold none of
        val's or test's."""
        return [path for _, path in self._split()[split]]

    def _split(self) -> dict[str, list]:
        """Each split's ``((image, mask), image file)`` pairs."""
        p = self.params
        items = list(self._items(p.train_images, p.train_edges))
        if p.test_images is not None:
            test = list(self._items(p.test_images, p.test_edges))
        else:
            held = fraction_count(len(items), p.test_fraction)
            items, test = items[:-held], items[-held:]
        if p.val_images is not None:
            val = list(self._items(p.val_images, p.val_edges))
        else:
            held = fraction_count(len(items), p.val_fraction) if items else 0
            items, val = holdout(items, held, p.split_seed)
        if not items or not val or not test:
            raise DataError(f"{p.train_images}: too few images ({len(self._items(p.train_images, p.train_edges))}) "
                            "to hold out val and test splits; give val_images/val_edges and "
                            "test_images/test_edges")
        return {"train": items, "val": val, "test": test}

    def train_set(self) -> torch.utils.data.Dataset:
        return FolderTrain(_pairs(self._split()["train"]), self.params.size, self.params.min_scale, self.params.augment)

    def val_set(self) -> torch.utils.data.Dataset:
        return FolderEval(_pairs(self._split()["val"]), self.params.threshold)

    def test_set(self) -> torch.utils.data.Dataset:
        return FolderEval(_pairs(self._split()["test"]), self.params.threshold)
