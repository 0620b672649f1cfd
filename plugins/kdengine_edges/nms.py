"""Edge non-maximum suppression, the step that published BSDS500 numbers apply before thinning.

The structured-edge toolbox (Dollár & Zitnick, "Fast Edge Detection Using Structured Forests",
TPAMI 2015; its ``edgesNms``) and the evaluations of HED, RCF and later detectors thin a soft edge
map ``P`` to one-pixel ridges this way:

- ``E = tri(P, 1)``: a 3-tap triangle filter ``[1 2 1] / 4`` along rows and columns;
- orientation from second derivatives of a wider smoothing, ``S = tri(E, 4)``:
  ``O = atan(S_yy * sign(-S_xy) / (S_xx + 1e-5)) mod pi`` (central differences);
- a pixel keeps its value when ``m * E`` is at least ``E`` interpolated (bilinearly) at distance
  ``d = 1..r`` on both sides along ``(cos O, sin O)``; otherwise it becomes 0 (``r = 1``,
  ``m = 1.01``: a conservative suppression that keeps near-ties);
- values within ``s = 5`` pixels of the border are scaled down linearly, to 0 on the outermost
  row and column, because the smoothing and the gradients are least reliable there.

Without it a thick response (a blurred ridge several pixels wide) is thresholded into a band that
morphological thinning reduces to its medial axis only where the band is solid; a band that breaks
up at one threshold leaves spurs and doubled lines, and its precision collapses. With it every
threshold sees the ridge crest alone.

Kept as the toolbox has it, so that scores match the benchmark's: where nothing varies along x
(an exactly horizontal synthetic structure) ``S_xy = 0`` and ``O = 0``, so such a ridge is compared
along itself and not thinned by this step (thinning still is); real maps never vary that evenly.
pyEdgeEval's port replaces ``S_xx == 0`` by ``1e-5`` instead of adding ``1e-5``, which orients a
few pixels per image differently.

Everything is vectorised over the whole image (two interpolations per pixel and radius step),
about 50 ms for a 481x321 image.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d

#: added to the denominator of the orientation, as the toolbox does: finite where S_xx is 0
_ORIENTATION_EPS = 1e-5


def triangle_filter(radius: int) -> np.ndarray:
    """The 1-D triangle filter of the toolbox's ``convTri`` for an integer radius >= 1.

    Radius 1 is ``[1 2 1] / 4``; radius ``r > 1`` is ``[1 .. r+1 .. 1] / (r+1)^2``.
    """
    if radius < 1:
        raise ValueError(f"triangle filter radius must be >= 1, got {radius}")
    if radius == 1:
        return np.array([1.0, 2.0, 1.0]) / 4.0
    ramp = np.arange(1, radius + 2, dtype=np.float64)
    return np.concatenate([ramp, ramp[-2::-1]]) / (radius + 1) ** 2


def triangle_smooth(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable triangle smoothing with mirrored borders (MATLAB's ``'symmetric'`` padding,
    which is scipy's ``'reflect'``)."""
    kernel = triangle_filter(radius)
    out = correlate1d(np.asarray(image, dtype=np.float64), kernel, axis=1, mode="reflect")
    return correlate1d(out, kernel, axis=0, mode="reflect")


def edge_orientation(edge: np.ndarray) -> np.ndarray:
    """The normal direction of the edges, in ``[0, pi)``, from second derivatives of the edge map
    smoothed with the radius-4 triangle filter."""
    smooth = triangle_smooth(edge, 4)
    d_y, d_x = np.gradient(smooth)
    d_xx = np.gradient(d_x, axis=1)
    d_xy = np.gradient(d_y, axis=1)
    d_yy = np.gradient(d_y, axis=0)
    ratio = d_yy * np.sign(-d_xy) / (d_xx + _ORIENTATION_EPS)
    return np.mod(np.arctan(ratio), np.pi)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``image`` at real coordinates (column ``x``, row ``y``), clamped just inside the image."""
    height, width = image.shape
    x = np.clip(x, 0.0, width - 1.001)
    y = np.clip(y, 0.0, height - 1.001)
    x0 = x.astype(np.int64)
    y0 = y.astype(np.int64)
    dx0, dy0 = x - x0, y - y0
    dx1, dy1 = 1 - dx0, 1 - dy0
    return (image[y0, x0] * dx1 * dy1 + image[y0, x0 + 1] * dx0 * dy1
            + image[y0 + 1, x0] * dx1 * dy0 + image[y0 + 1, x0 + 1] * dx0 * dy0)


def suppress_non_maxima(edge: np.ndarray, orientation: np.ndarray, radius: int = 1,
                        border: int = 5, multiplier: float = 1.01) -> np.ndarray:
    """Zero every pixel that is not a maximum of ``edge`` along its normal ``orientation``, then
    fade the ``border`` outermost rows and columns (see the module docstring)."""
    edge = np.asarray(edge, dtype=np.float64)
    height, width = edge.shape
    out = edge.copy()
    if height < 2 or width < 2:  # no neighbours to interpolate between
        return out
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    cos_o, sin_o = np.cos(orientation), np.sin(orientation)
    scaled = edge * multiplier
    keep = np.ones(edge.shape, dtype=bool)
    for step in range(1, radius + 1):
        for sign in (-1, 1):
            d = sign * step
            keep &= scaled >= _bilinear(edge, cols + d * cos_o, rows + d * sin_o)
    out[~keep] = 0.0
    border = min(border, width // 2, height // 2)
    if border > 0:
        col_index = np.arange(width)
        row_index = np.arange(height)
        col_fade = np.minimum(np.minimum(col_index, width - 1 - col_index) / border, 1.0)
        row_fade = np.minimum(np.minimum(row_index, height - 1 - row_index) / border, 1.0)
        out *= col_fade[None, :]
        out *= row_fade[:, None]
    return out


def edge_nms(prob: np.ndarray, radius: int = 1, border: int = 5,
             multiplier: float = 1.01) -> np.ndarray:
    """The thinned soft edge map of one ``(H, W)`` probability map: smoothed with the radius-1
    triangle filter, oriented by its own second derivatives, non-maxima suppressed.

    A map less than two pixels high or wide has no orientation; it is returned as it is.
    """
    prob = np.asarray(prob, dtype=np.float64)
    if min(prob.shape) < 2:
        return prob.copy()
    edge = triangle_smooth(prob, 1)
    return suppress_non_maxima(edge, edge_orientation(edge), radius, border, multiplier)
