"""Super-resolution items: the dataset parameters every SR dataset shares, and the torch datasets
that turn decoded uint8 images into (LR, HR) tensors in [0, 1].

Train items are random HR patches (``patch`` px, random flips and 90 degree rotations) with their
LR; val and test items are full (mod-cropped) images, so batches of images of different sizes come
as lists (see :func:`collate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch.utils.data import Dataset

from kdengine import DataError, Params

from .degrade import degrade, mod_crop, to_tensor
from .pairs import read_pairs


class SRParams(Params):
    scale: int = Field(default=4, ge=2, le=8)
    #: HR patch side for training (LR patches are patch / scale).
    patch: int = Field(default=160, ge=16)
    #: "blur_bicubic": Gaussian blur (blur_sigma) then bicubic; "bicubic": bicubic only.
    degradation: Literal["blur_bicubic", "bicubic"] = "blur_bicubic"
    blur_sigma: float = Field(default=1.0, ge=0.0, le=5.0)
    #: Random patches drawn per train image per epoch.
    patches_per_image: int = Field(default=16, ge=1)
    #: Random horizontal/vertical flips and transposition of train patches.
    augment: bool = True
    #: Tiled inference on val and test images: LR tile side and overlap, in LR pixels (0 = whole image).
    tile: int = Field(default=96, ge=0)
    tile_overlap: int = Field(default=8, ge=0)

    @model_validator(mode="after")
    def _patch_fits_scale(self):
        if self.patch % self.scale:
            raise ValueError(f"patch ({self.patch}) must be a multiple of scale ({self.scale})")
        if self.tile and self.tile_overlap * 2 >= self.tile:
            raise ValueError("tile_overlap must be less than half of tile")
        return self

    @property
    def sigma(self) -> float:
        return self.blur_sigma if self.degradation == "blur_bicubic" else 0.0



def too_small(image: np.ndarray, name: str, patch: int) -> DataError | None:
    """The error for a training image smaller than the patch, or None."""
    if min(image.shape[:2]) < patch:
        return DataError(f"{name}: image {image.shape[1]}x{image.shape[0]} is smaller than "
                         f"the {patch} px training patch")
    return None


class PatchDataset(Dataset):
    """Random HR patches of in-memory images, degraded on the fly: (LR, HR) in [0, 1]."""

    def __init__(self, images: list[np.ndarray], names: list[str], params: SRParams):
        self.images = images
        self.params = params
        for image, name in zip(images, names):
            error = too_small(image, name, params.patch)
            if error is not None:
                raise error

    def __len__(self) -> int:
        return len(self.images) * self.params.patches_per_image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image = self.images[index % len(self.images)]
        p = self.params.patch
        top = int(torch.randint(0, image.shape[0] - p + 1, ()))
        left = int(torch.randint(0, image.shape[1] - p + 1, ()))
        hr = to_tensor(image[top: top + p, left: left + p])
        if self.params.augment:
            flips = torch.rand(3)
            if flips[0] < 0.5:
                hr = hr.flip(-1)
            if flips[1] < 0.5:
                hr = hr.flip(-2)
            if flips[2] < 0.5:
                hr = hr.transpose(-1, -2)
        hr = hr.contiguous()
        return degrade(hr, self.params.scale, self.params.sigma), hr


class FullImageDataset(Dataset):
    """Whole images (mod-cropped to the scale); LR made by the same degradation, deterministic."""

    def __init__(self, images: list[np.ndarray], names: list[str], params: SRParams):
        self.images = [mod_crop(image, params.scale) for image in images]
        self.names = names
        self.params = params

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr = to_tensor(self.images[index])
        return degrade(hr, self.params.scale, self.params.sigma), hr


class PairedDataset(Dataset):
    """Given (LR, HR) uint8 pairs; train mode draws aligned random patches, eval mode whole images."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], names: list[str], params: SRParams,
                 train: bool = False):
        self.pairs = pairs
        self.names = names
        self.params = params
        self.train = train

    def __len__(self) -> int:
        return len(self.pairs) * (self.params.patches_per_image if self.train else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        lr, hr = self.pairs[index % len(self.pairs)]
        if not self.train:
            return to_tensor(lr), to_tensor(hr)
        s, p = self.params.scale, self.params.patch // self.params.scale
        top = int(torch.randint(0, max(1, lr.shape[0] - p + 1), ()))
        left = int(torch.randint(0, max(1, lr.shape[1] - p + 1), ()))
        lr_t = to_tensor(lr[top: top + p, left: left + p])
        hr_t = to_tensor(hr[top * s: (top + p) * s, left * s: (left + p) * s])
        if self.params.augment:
            flips = torch.rand(3)
            for axis, flip in ((-1, flips[0]), (-2, flips[1])):
                if flip < 0.5:
                    lr_t, hr_t = lr_t.flip(axis), hr_t.flip(axis)
            if flips[2] < 0.5:
                lr_t, hr_t = lr_t.transpose(-1, -2), hr_t.transpose(-1, -2)
        return lr_t.contiguous(), hr_t.contiguous()


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]):
    """Stack same-size items; images of different sizes stay lists (predict and metrics take both)."""
    inputs, targets = zip(*batch)
    if all(x.shape == inputs[0].shape for x in inputs) and all(y.shape == targets[0].shape for y in targets):
        return torch.stack(inputs), torch.stack(targets)
    return list(inputs), list(targets)



def paired_set(root: Path, scale: int) -> Dataset:
    """Every (LR, HR) pair of a Set5-style tree as whole images: a benchmark set, for scoring
    outside a run (in a run it is the test_root of ``sr_folder`` or ``sr_paired``)."""
    return PairedDataset(*read_pairs(Path(root), scale), SRParams(scale=scale, patch=16 * scale))
