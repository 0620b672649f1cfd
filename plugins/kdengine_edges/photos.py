"""Photographs without edge labels: a transfer set (``[data.transfer]``) that the teacher alone
labels. Each image is read once; every draw of it is a new random crop and flip at the training
size, as BSDS500's own train images are cropped, so the student sees the same kind of views."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from kdengine import DataError, MissingSplitError, Params, fingerprint_files

from kdengine_edges.provider import EdgeProvider
from kdengine_edges.readers import read_rgb
from kdengine_edges.transforms import train_view

#: The image files a photo folder holds.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class PhotoCrops(torch.utils.data.Dataset):
    def __init__(self, images: list[torch.Tensor], size: int, min_scale: float, augment: str = "crop_flip"):
        self.images, self.size, self.min_scale, self.augment = images, size, min_scale, augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index].float() / 255.0
        no_label = torch.zeros(1, *image.shape[-2:])  # never read: transfer rows have no labels
        return train_view(image, no_label, self.size, self.min_scale, self.augment)


class PhotoFolder(EdgeProvider):
    """Unlabelled photographs from folders you name (searched recursively), for a transfer set."""

    summary = "photographs without labels (folders, recursive), as a transfer set the teacher labels"

    class Params(Params):
        roots: list[Path] = Field(min_length=1, description="folders of photographs, searched recursively")
        size: int = Field(256, ge=16, le=2048, description="side of the square crops")
        min_scale: float = Field(0.6, gt=0.0, le=1.0,
                                 description="smallest crop side, as a fraction of the short side")
        augment: Literal["crop_flip", "strong"] = Field(
            "crop_flip", description="train views: crop, flip, resize; strong: also a quarter turn and colour jitter")
        min_side: int = Field(32, ge=1, description="leave out images whose short side is smaller")

    def files(self) -> list[Path]:
        found = []
        for root in self.params.roots:
            found += sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return found

    def check(self) -> None:
        for root in self.params.roots:
            if not root.is_dir():
                raise DataError(f"{root}: photo folder not found")
        if not self.files():
            raise DataError(f"{', '.join(map(str, self.params.roots))}: no images "
                            f"({', '.join(IMAGE_SUFFIXES)}) in the photo folders")

    def split_files(self, split: str) -> list[Path] | None:
        return self.files() if split == "train" else []

    def fingerprint(self) -> dict:
        return fingerprint_files(self.files())

    def train_set(self) -> torch.utils.data.Dataset:
        images = []
        for path in self.files():
            try:
                image = read_rgb(path)
            except DataError as exc:
                if self.on_bad_sample != "skip":
                    raise
                self.bad_sample(exc)
                continue
            if min(image.shape[-2:]) >= self.params.min_side:
                images.append(image)
        if not images:
            raise DataError(f"{', '.join(map(str, self.params.roots))}: no image with a short side of at least "
                            f"min_side = {self.params.min_side} pixels")
        return PhotoCrops(images, self.params.size, self.params.min_scale, self.params.augment)

    def val_set(self):
        raise MissingSplitError("photo_folder has no labels, so no val split: it serves as a transfer set")

    def test_set(self):
        raise MissingSplitError("photo_folder has no labels, so no test split: it serves as a transfer set")
