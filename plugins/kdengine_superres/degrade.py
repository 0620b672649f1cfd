"""The degradation that makes an LR image from an HR one, and image decoding.

LR = quantize(bicubic_down_s(G_sigma * HR)): an optional isotropic Gaussian blur (the "BD"
degradation of Zhang et al., CVPR 2018) followed by antialiased bicubic downsampling by ``scale``
(MATLAB ``imresize``-like), rounded to 8-bit levels as a saved LR image would be.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdengine import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) or (B, C, H, W) with reflect padding."""
    if sigma <= 0:
        return image
    batched = image.dim() == 4
    x = image if batched else image[None]
    channels = x.shape[1]
    k = gaussian_kernel(sigma).to(x)
    radius = (k.numel() - 1) // 2
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return x if batched else x[0]


def degrade(hr: torch.Tensor, scale: int, blur_sigma: float = 0.0, quantize: bool = True) -> torch.Tensor:
    """LR version of an HR image (C, H, W) in [0, 1]; H and W must be multiples of ``scale``."""
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"HR size {height}x{width} is not a multiple of the scale {scale}")
    x = gaussian_blur(hr, blur_sigma)
    batched = x.dim() == 4
    x = x if batched else x[None]
    lr = F.interpolate(x, size=(height // scale, width // scale), mode="bicubic",
                       align_corners=False, antialias=True).clamp(0, 1)
    if quantize:
        lr = torch.round(lr * 255) / 255
    return lr if batched else lr[0]


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 array; a bad file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return as_rgb_uint8(np.asarray(img.convert("RGB") if img.mode not in ("RGB", "L", "I;16") else img))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode this image ({exc})") from None


def as_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4) of any integer/float range -> (H, W, 3) uint8."""
    array = np.asarray(array)
    if array.dtype == np.uint16:
        array = (array / 257.0).round()
    elif array.dtype.kind == "f":
        array = array * 255.0 if array.max() <= 1.0 else array
    elif array.dtype == bool:
        array = array * 255
    array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"unsupported image shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255)


def mod_crop(array: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of ``scale`` (SR evaluation convention)."""
    height, width = array.shape[:2]
    return array[: height - height % scale, : width - width % scale]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
