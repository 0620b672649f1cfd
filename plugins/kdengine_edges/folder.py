"""``edge_folder``: your own images and edge masks, paired by file name.

::

    <train_images>/<name>.<jpg|png|...>    <train_edges>/<name>.<png|...>   (white = edge)

The evaluation split is its own pair of folders, or, when those are not given, the last
``eval_fraction`` of the training pairs (sorted by name).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from pydantic import Field, model_validator

from kdengine import DataError, Params
from kdengine import fingerprint_files

from kdengine_edges.provider import EdgeProvider
from kdengine_edges.readers import IMAGE_SUFFIXES, read_gray, read_rgb
from kdengine_edges.transforms import eval_target, random_crop_flip_resize


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
    """The pairs of two folders, and the bad ones left out (only with ``skip``; without it the
    first bad pair raises its DataError)."""
    items, bad = [], []
    for image_path, mask_path in pair_files(Path(images), Path(edges)):
        try:
            items.append(load_pair(image_path, mask_path, Path(edges), soft, threshold))
        except DataError as exc:
            if not skip:
                raise
            bad.append(exc)
    return tuple(items), tuple(bad)


class FolderTrain(torch.utils.data.Dataset):
    def __init__(self, items, size: int, min_scale: float):
        self.items, self.size, self.min_scale = items, size, min_scale

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, mask = self.items[index]
        return random_crop_flip_resize(image.float() / 255.0, mask, self.size, self.min_scale)


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
        eval_images: Optional[Path] = None
        eval_edges: Optional[Path] = None
        eval_fraction: float = Field(0.1, gt=0.0, lt=1.0,
                                     description="held out when no eval folders are given")
        size: int = Field(256, ge=16, le=2048, description="side of the square training crops")
        min_scale: float = Field(0.6, gt=0.0, le=1.0)
        soft: bool = Field(False, description="keep grey mask values as soft targets")
        threshold: float = Field(0.5, gt=0.0, le=1.0, description="mask value (0-1) of an edge")

        @model_validator(mode="after")
        def _both_or_neither(self):
            if (self.eval_images is None) != (self.eval_edges is None):
                raise ValueError("give both eval_images and eval_edges, or neither")
            return self

    def check(self) -> None:
        p = self.params
        for folder in (p.train_images, p.train_edges, p.eval_images, p.eval_edges):
            if folder is not None and not folder.is_dir():
                raise DataError(f"{folder}: folder not found")

    def _items(self, images: Path, edges: Path):
        p = self.params
        items, bad = _load(str(images.resolve()), str(edges.resolve()), p.soft, p.threshold,
                           self.on_bad_sample == "skip")
        for error in bad:
            self.bad_sample(error)
        return items

    def fingerprint(self) -> dict:
        """Every image and edge mask of the train (and eval) folders."""
        p = self.params
        files = []
        for images, edges in ((p.train_images, p.train_edges), (p.eval_images, p.eval_edges)):
            if images is not None:
                files += [f for pair in pair_files(images, edges) for f in pair if f is not None]
        return fingerprint_files(files)

    def _split(self):
        p = self.params
        items = self._items(p.train_images, p.train_edges)
        if p.eval_images is not None:
            return items, self._items(p.eval_images, p.eval_edges)
        held = max(1, round(len(items) * p.eval_fraction))
        if held >= len(items):
            raise DataError(f"{p.train_images}: too few images ({len(items)}) to hold out an "
                            "evaluation split; give eval_images and eval_edges")
        return items[:-held], items[-held:]

    def train_set(self) -> torch.utils.data.Dataset:
        return FolderTrain(self._split()[0], self.params.size, self.params.min_scale)

    def eval_set(self) -> torch.utils.data.Dataset:
        return FolderEval(self._split()[1], self.params.threshold)
