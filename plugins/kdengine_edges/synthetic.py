"""Procedural edge-detection images with exact ground-truth object boundaries.

Each image is a textured background with several overlapping textured shapes (ellipses, rotated
rectangles, convex polygons, wobbly blobs). What makes it hard, on purpose:
- textures (gratings and smooth noise) create strong intensity edges that are *not* boundaries;
- thin painted strokes (scratches) are not boundaries either;
- some shapes have almost the colour of what they cover (low-contrast boundaries);
- blur and sensor noise.
The boundary of a region is drawn on the pixel of the upper (occluding) region wherever two
4-neighbours belong to different regions, so it is exact and one pixel wide.

Every image depends only on ``(seed, split, index)``: the same parameters give the same data on
any machine, whatever the generation order, and each split draws from a random stream of its
own, so train, val and test never share an image.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

#: The random stream of each split. Test is stream 1, the stream the results in recipes/edge.toml's
#: header were measured on.
_SPLIT_IDS = {"train": 0, "test": 1, "val": 2}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, amplitude: float) -> np.ndarray:
    coarse = rng.normal(0.0, amplitude, (cells, cells)).astype(np.float32)
    return ndimage.zoom(coarse, size / cells, order=1, mode="nearest")[:size, :size]


def _texture(rng, yy, xx, size: int) -> np.ndarray:
    """A colour field: base colour + oriented grating + smooth noise, HxWx3."""
    base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    theta = rng.uniform(0.0, math.pi)
    freq = rng.uniform(3.0, 14.0)
    amp = rng.choice([0.0, rng.uniform(0.05, 0.3)], p=[0.3, 0.7])
    grating = amp * np.sin(
        2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + rng.uniform(0, 6.3)
    )
    noise = _smooth_noise(rng, size, int(rng.integers(3, 9)), rng.uniform(0.0, 0.12))
    direction = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    return base[None, None, :] + (grating + noise)[..., None] * direction[None, None, :]


def _shape_mask(rng, yy, xx) -> np.ndarray:
    cy, cx = rng.uniform(0.1, 0.9, 2)
    kind = rng.integers(0, 4)
    angle = rng.uniform(0, math.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    a, b = rng.uniform(0.07, 0.3, 2)
    if kind == 0:  # ellipse
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == 1:  # rotated rectangle
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if kind == 2:  # convex polygon: intersection of half-planes through angle-sorted vertices
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radius = rng.uniform(0.08, 0.3)
        vy, vx = cy + radius * np.sin(angles), cx + radius * np.cos(angles)
        inside = np.ones_like(xx, dtype=bool)
        for i in range(n):
            j = (i + 1) % n
            cross = (vx[j] - vx[i]) * (yy - vy[i]) - (vy[j] - vy[i]) * (xx - vx[i])
            inside &= cross >= 0
        return inside
    # blob: radius modulated by a few harmonics of the polar angle
    r = np.sqrt(dx**2 + dy**2)
    phi = np.arctan2(dy, dx)
    r0 = rng.uniform(0.08, 0.25)
    wobble = sum(
        rng.uniform(0.0, 0.25) / k * np.sin(k * phi + rng.uniform(0, 6.3)) for k in range(2, 5)
    )
    return r <= r0 * (1.0 + wobble)


def _strokes(rng, image: np.ndarray, yy, xx, count: int) -> None:
    """Paint thin straight or curved strokes that are not object boundaries."""
    size = image.shape[0]
    for _ in range(count):
        y0, x0, y1, x1 = rng.uniform(0, 1, 4)
        bend = rng.uniform(-0.2, 0.2)
        t = np.linspace(0, 1, 4 * size)
        py = y0 + (y1 - y0) * t + bend * np.sin(math.pi * t)
        px = x0 + (x1 - x0) * t
        iy = np.clip((py * size).astype(int), 0, size - 1)
        ix = np.clip((px * size).astype(int), 0, size - 1)
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        image[iy, ix] = 0.5 * image[iy, ix] + 0.5 * colour


def boundaries(labels: np.ndarray) -> np.ndarray:
    """One-pixel boundaries of a label map, on the side of the larger (upper) label."""
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        a = labels.take(np.arange(labels.shape[axis] - 1), axis=axis)
        b = labels.take(np.arange(1, labels.shape[axis]), axis=axis)
        differ = a != b
        first = differ & (a > b)
        second = differ & (b > a)
        if axis == 0:
            edge[:-1] |= first
            edge[1:] |= second
        else:
            edge[:, :-1] |= first
            edge[:, 1:] |= second
    return edge


def render(seed: int, split: str, index: int, size: int, shapes: tuple[int, int],
           noise: float, low_contrast: float, strokes: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image HxWx3 float32 in [0, 1], boundary HxW bool)``."""
    image, labels = scene(seed, split, index, size, shapes, noise, low_contrast, strokes)
    return image, boundaries(labels)


def annotator_boundaries(labels: np.ndarray, seed: int, split: str, index: int,
                         miss: float) -> np.ndarray:
    """The boundaries one simulated annotator draws: each region's outline is left out whole
    with probability ``miss``, as BSDS annotators leave out contours they judge unimportant.

    A boundary pixel lies on the upper region (see :func:`boundaries`), so a region's outline is
    the boundary pixels carrying its label. Uses its own random stream: the image does not change
    with ``miss``.
    """
    edge = boundaries(labels)
    if miss <= 0.0:
        return edge
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index, 1])
    regions = np.arange(1, int(labels.max()) + 1)
    dropped = regions[rng.uniform(size=len(regions)) < miss]
    return edge & ~np.isin(labels, dropped)


def scene(seed: int, split: str, index: int, size: int, shapes: tuple[int, int],
          noise: float, low_contrast: float, strokes: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image HxWx3 float32 in [0, 1], region labels HxW int32)``."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = _texture(rng, yy, xx, size)
    labels = np.zeros((size, size), dtype=np.int32)
    for region in range(1, int(rng.integers(shapes[0], shapes[1] + 1)) + 1):
        mask = _shape_mask(rng, yy, xx)
        if not mask.any():
            continue
        fill = _texture(rng, yy, xx, size)
        if rng.uniform() < low_contrast:
            # nearly the colour of what lies under it: a faint but real boundary
            under = image[mask].mean(axis=0)
            offset = rng.uniform(0.06, 0.15) * rng.choice([-1.0, 1.0], 3)
            fill = fill - fill[mask].mean(axis=0) + under + offset
        image[mask] = fill[mask]
        labels[mask] = region
    _strokes(rng, image, yy, xx, int(rng.integers(0, strokes + 1)))
    sigma = rng.uniform(0.3, 1.0)
    image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
    image = image + rng.normal(0.0, noise * rng.uniform(0.5, 1.5), image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), labels
