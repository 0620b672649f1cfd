"""Reading images and boundary annotations; every failure is a DataError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdengine import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_rgb(path: Path) -> torch.Tensor:
    """A 3xHxW uint8 tensor."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_gray(path: Path) -> np.ndarray:
    """An HxW uint8 array (edge masks)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L")).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: edge mask not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable edge mask ({exc})") from exc


def read_bsds_boundaries(path: Path) -> np.ndarray:
    """The ``Boundaries`` of every annotator of a BSDS ``groundTruth`` .mat file, KxHxW bool."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: ground-truth file not found")
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except Exception as exc:
        raise DataError(f"{path}: unreadable MATLAB file ({type(exc).__name__}: {exc})") from exc
    if "groundTruth" not in mat:
        raise DataError(f"{path}: no 'groundTruth' variable (found: {', '.join(k for k in mat if not k.startswith('__')) or 'none'})")
    cells = np.asarray(mat["groundTruth"]).ravel()
    maps = []
    for i, cell in enumerate(cells):
        try:
            entry = cell if cell.dtype.names else cell.item()
            boundaries = np.asarray(entry["Boundaries"]).squeeze()
            while boundaries.dtype == object:
                boundaries = boundaries.item()
        except Exception as exc:
            raise DataError(f"{path}: annotator {i + 1} has no 'Boundaries' field ({exc})") from exc
        if boundaries.ndim != 2:
            raise DataError(f"{path}: annotator {i + 1}: Boundaries is not a 2-D map "
                            f"(shape {boundaries.shape})")
        maps.append(boundaries != 0)
    if not maps:
        raise DataError(f"{path}: 'groundTruth' holds no annotator")
    shapes = {m.shape for m in maps}
    if len(shapes) != 1:
        raise DataError(f"{path}: annotators have different sizes {sorted(shapes)}")
    return np.stack(maps)
