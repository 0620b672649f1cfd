import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import circle_perimeter, line

from kdengine_edges.nms import (edge_nms, edge_orientation, suppress_non_maxima, triangle_filter,
                                triangle_smooth)

H, W = 48, 64

#: drawn segments (row0, col0, row1, col1): vertical, shallow and steep-ish diagonals
SEGMENTS = [(6, 32, 41, 32), (10, 6, 30, 57), (40, 10, 12, 50)]


def segment(r0, c0, r1, c1):
    ridge = np.zeros((H, W))
    rows, cols = line(r0, c0, r1, c1)
    ridge[rows, cols] = 1.0
    return ridge


def away_from_ends(r0, c0, r1, c1, reach=4):
    """Pixels farther than ``reach`` (chessboard) from both ends: the smoothing lengthens a
    segment and its tapering ends are not ridges across the segment."""
    mask = np.ones((H, W), dtype=bool)
    for r, c in ((r0, c0), (r1, c1)):
        mask[max(r - reach, 0):r + reach + 1, max(c - reach, 0):c + reach + 1] = False
    return mask


def test_triangle_filter_taps():
    np.testing.assert_allclose(triangle_filter(1), [0.25, 0.5, 0.25])
    np.testing.assert_allclose(triangle_filter(4), np.array([1, 2, 3, 4, 5, 4, 3, 2, 1]) / 25)
    with pytest.raises(ValueError):
        triangle_filter(0)


@pytest.mark.parametrize("radius", [1, 4])
def test_triangle_smooth_pads_by_mirroring(radius):
    # the toolbox pads with MATLAB's 'symmetric' mode (edge pixel repeated), then convolves
    image = np.random.default_rng(0).random((9, 13))
    kernel = triangle_filter(radius)
    padded = np.pad(image, radius, mode="symmetric")
    rows = np.stack([np.convolve(row, kernel, mode="valid") for row in padded])
    expected = np.stack([np.convolve(col, kernel, mode="valid") for col in rows.T]).T
    np.testing.assert_allclose(triangle_smooth(image, radius), expected, atol=1e-12)


def angle_gap(a, b):
    """Distance between two orientations modulo pi."""
    d = np.mod(a - b, np.pi)
    return np.minimum(d, np.pi - d)


@pytest.mark.parametrize("direction, normal", [
    ("vertical", 0.0),              # intensity varies along x: the normal is the x axis
    ("diagonal", 3 * np.pi / 4),    # ridge along y = x (rows grow downwards)
    ("antidiagonal", np.pi / 4),
])
def test_orientation_is_the_normal_of_a_ridge(direction, normal):
    yy, xx = np.mgrid[0:H, 0:W].astype(float)
    distance = {"vertical": xx - 32.3, "diagonal": (yy - xx) / np.sqrt(2),
                "antidiagonal": (yy + xx - 56) / np.sqrt(2)}[direction]
    orientation = edge_orientation(triangle_smooth(np.exp(-distance**2 / 8), 1))
    crest = (np.abs(distance) < 0.5) & (np.abs(yy - 24) < 10) & (np.abs(xx - 32) < 10)
    assert angle_gap(orientation[crest], normal).max() < 0.05


def test_orientation_of_an_exactly_horizontal_structure_is_zero():
    # the toolbox's sign(-Oxy) is 0 where nothing varies along x: such a structure is oriented
    # like a vertical one (a known quirk of the formula, kept so that scores match the benchmark)
    yy = np.mgrid[0:H, 0:W][0].astype(float)
    orientation = edge_orientation(triangle_smooth(np.exp(-(yy - 24.3) ** 2 / 8), 1))
    assert np.all(orientation == 0.0)


@pytest.mark.parametrize("ends", SEGMENTS)
def test_nms_of_a_one_pixel_ridge_is_that_ridge(ends):
    ridge = segment(*ends)
    out = edge_nms(ridge)
    keep = away_from_ends(*ends)
    np.testing.assert_array_equal((out > 0) & keep, (ridge > 0) & keep)
    # the kept values are those of the smoothed map (ridge pixels away from the border)
    inside = (ridge > 0) & keep
    np.testing.assert_allclose(out[inside], triangle_smooth(ridge, 1)[inside])


def test_nms_of_a_one_pixel_circle_is_that_circle():
    ridge = np.zeros((H, W))
    rows, cols = circle_perimeter(24, 32, 15)
    ridge[rows, cols] = 1.0
    kept = edge_nms(ridge) > 0
    assert (kept[ridge > 0]).all()
    # the only extras: beside the top and bottom, where the circle is exactly horizontal
    # (see test_orientation_of_an_exactly_horizontal_structure_is_zero)
    extra = np.argwhere(kept & (ridge == 0))
    assert len(extra) <= 4 and set(extra[:, 1].tolist()) <= {32}


@pytest.mark.parametrize("ends", SEGMENTS)
def test_nms_reduces_a_blurred_ridge_to_its_crest(ends):
    ridge = segment(*ends)
    blurred = ndimage.gaussian_filter(ridge, 2.0)
    kept = edge_nms(blurred / blurred.max()) > 0
    keep = away_from_ends(*ends, reach=6)  # the blur's tails lengthen the segment further
    assert kept[(ridge > 0) & keep].all()
    # nothing farther than a pixel from the crest survives (thick before: several pixels)
    distance = ndimage.distance_transform_edt(ridge == 0)
    assert distance[kept & keep].max() <= 1.0
    assert (blurred > 0.1 * blurred.max())[keep].sum() > 4 * kept[keep].sum()


def test_border_fades_linearly_to_zero():
    # one vertical ridge per column near the left and right borders; orientation 0 compares each
    # pixel with its row neighbours, which are 0, so only the border fade changes the values
    width, height = 30, 40
    edge = np.zeros((height, width))
    for col in (0, 2, 4, 6, 12, 25, 27, 29):
        edge[:, col] = 0.5
    out = suppress_non_maxima(edge, np.zeros_like(edge))
    middle = out[20]
    for col in (0, 2, 4, 6, 12, 25, 27, 29):
        expected = 0.5 * min(min(col, width - 1 - col) / 5, 1.0)
        assert middle[col] == pytest.approx(expected)
    # and rows near the top and bottom fade the same way
    np.testing.assert_allclose(out[[0, 1, 3, 36, 38, 39], 12],
                               0.5 * np.array([0, 1, 3, 3, 1, 0]) / 5)


def test_nms_keeps_near_ties_within_the_multiplier():
    # the right neighbour is 0.5 % above the centre: kept with m = 1.01, suppressed with m = 1
    edge = np.zeros((11, 11))
    edge[:, 5] = 1.0
    edge[:, 6] = 1.005
    orientation = np.zeros_like(edge)
    assert suppress_non_maxima(edge, orientation, border=0)[5, 5] == 1.0
    assert suppress_non_maxima(edge, orientation, border=0, multiplier=1.0)[5, 5] == 0.0


def test_suppression_equals_pyedgeeval_on_the_same_inputs():
    # pyEdgeEval compiles the toolbox's suppression step (edgesNmsMex): given the same smoothed
    # map and orientation the outputs must be identical, value for value
    compiled = pytest.importorskip("pyEdgeEval._lib")
    rng = np.random.default_rng(1)
    for _ in range(5):
        prob = ndimage.gaussian_filter(rng.random((37, 53)), rng.uniform(0.5, 3.0))
        edge = triangle_smooth(prob / prob.max(), 1)
        orientation = edge_orientation(edge)
        expected = compiled.nms(edge, orientation, r=1, s=5, m=1.01)
        np.testing.assert_allclose(suppress_non_maxima(edge, orientation), expected, atol=1e-12)


def test_edge_nms_close_to_pyedgeeval_fast_nms():
    # pyEdgeEval's fast_nms replaces Oxx == 0 by 1e-5 where the toolbox adds 1e-5 everywhere;
    # the orientation differs only where |Oxx| is tiny, so a handful of pixels may differ
    pytest.importorskip("cv2")  # pyEdgeEval.preprocess imports it
    preprocess = pytest.importorskip("pyEdgeEval.preprocess")
    rng = np.random.default_rng(2)
    ridge = segment(10, 6, 30, 57)
    prob = np.clip(0.7 * ndimage.gaussian_filter(ridge, 1.5) / 0.1
                   + 0.3 * ndimage.gaussian_filter(rng.random((H, W)), 1.0), 0, 1)
    ours, theirs = edge_nms(prob), preprocess.fast_nms(prob)
    assert ((ours > 0) != (theirs > 0)).mean() < 0.01
    same = (ours > 0) == (theirs > 0)
    np.testing.assert_allclose(ours[same], theirs[same], atol=1e-12)


@pytest.mark.parametrize("shape", [(0, 0), (1, 7), (7, 1)])
def test_maps_too_small_to_orient_are_returned_unchanged(shape):
    prob = np.random.default_rng(3).random(shape)
    np.testing.assert_array_equal(edge_nms(prob), prob)
