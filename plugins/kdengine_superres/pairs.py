"""Set5-style HR/LR trees on disk: ``HR/<name>.<ext>`` with ``LR_bicubic/X<s>/<name>x<s>.<ext>``.
Reading checks that every LR image has its HR image at the scale; a problem is a DataError naming
the file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from kdengine import DataError

from .degrade import list_images, read_rgb


def read_pair(hr_path: Path, lr_dir: Path, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """One (LR, HR) pair, HR cropped to scale x LR; any problem is a DataError naming the file."""
    candidates = [p for p in lr_dir.glob(f"{hr_path.stem}x{scale}.*") if p.suffix.lower() in
                  (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")]
    if not candidates:
        raise DataError(f"{lr_dir / (hr_path.stem + f'x{scale}.png')}: LR image for {hr_path} not found")
    lr = read_rgb(candidates[0])
    hr = read_rgb(hr_path)
    height, width = lr.shape[0] * scale, lr.shape[1] * scale
    if not (height <= hr.shape[0] < height + scale and width <= hr.shape[1] < width + scale):
        raise DataError(f"{candidates[0]}: LR size {lr.shape[1]}x{lr.shape[0]} does not match "
                        f"{hr_path} ({hr.shape[1]}x{hr.shape[0]}) at x{scale}")
    return lr, np.ascontiguousarray(hr[:height, :width])


def read_pairs(root: Path, scale: int, bad_sample: Callable[[DataError], None] | None = None,
               hr_files: list[Path] | None = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read a Set5-style tree: ``HR/<name>.<ext>`` with ``LR_bicubic/X<s>/<name>x<s>.<ext>`` (only
    the pairs of ``hr_files``, when given). A bad pair raises its DataError, or goes to
    ``bad_sample`` and is left out."""
    hr_dir, lr_dir = paired_dirs(root, scale)
    pairs, names = [], []
    for hr_path in list_images(hr_dir) if hr_files is None else hr_files:
        try:
            pairs.append(read_pair(hr_path, lr_dir, scale))
        except DataError as exc:
            if bad_sample is None:
                raise
            bad_sample(exc)
            continue
        names.append(hr_path.stem)
    if not pairs:
        raise DataError(f"{hr_dir}: no HR images found")
    return pairs, names



def paired_files(root: Path, scale: int, hr_files: list[Path] | None = None) -> list[Path]:
    """The images of a Set5-style tree at one scale (HR and LR; only the pairs of ``hr_files``,
    when given), for the data fingerprint."""
    hr_dir, lr_dir = paired_dirs(root, scale)
    if hr_files is None:
        return list_images(hr_dir) + list_images(lr_dir)
    stems = {f"{p.stem}x{scale}" for p in hr_files}
    return list(hr_files) + [p for p in list_images(lr_dir) if p.stem in stems]


def paired_dirs(root: Path, scale: int) -> tuple[Path, Path]:
    root = Path(root)
    hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
    for folder in (root, hr_dir, lr_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (expected HR/ and LR_bicubic/X{scale}/ under {root})")
    return hr_dir, lr_dir


def is_paired_tree(root: Path) -> bool:
    return (Path(root) / "HR").is_dir() and (Path(root) / "LR_bicubic").is_dir()
