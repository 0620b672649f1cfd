"""Tiny on-disk datasets in the official layouts, for the edge plugin's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def boundary_maps(height: int, width: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = np.zeros((k, height, width), dtype=np.uint8)
    for i in range(k):
        row = int(rng.integers(1, height - 1))
        maps[i, row, :] = 1
        maps[i, :, int(rng.integers(1, width - 1))] = 1
    return maps


def write_mat(path: Path, boundaries: np.ndarray) -> None:
    """A ``groundTruth`` 1xK cell of structs with Segmentation and Boundaries, as BSDS500 has."""
    cell = np.empty((1, len(boundaries)), dtype=object)
    for i, b in enumerate(boundaries):
        cell[0, i] = {"Segmentation": np.ones(b.shape, dtype=np.uint16),
                      "Boundaries": b.astype(np.uint8)}
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"groundTruth": cell})


def write_image(path: Path, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def make_bsds(root: Path, per_split: int = 2, height: int = 24, width: int = 36) -> Path:
    """``root/images/<split>/<id>.jpg`` + ``root/groundTruth/<split>/<id>.mat``; the last image
    of each split is portrait, annotator counts vary from 3 to 5."""
    for s, split in enumerate(("train", "val", "test")):
        for i in range(per_split):
            name = f"{s}{i:03d}"
            h, w = (width, height) if i == per_split - 1 else (height, width)
            write_image(root / "images" / split / f"{name}.jpg", h, w, seed=10 * s + i)
            write_mat(root / "groundTruth" / split / f"{name}.mat",
                      boundary_maps(h, w, 3 + (i % 3), seed=10 * s + i))
    return root
