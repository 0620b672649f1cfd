"""Boundary matching of the BSDS benchmark (Martin, Fowlkes & Malik, TPAMI 2004; Arbelaez et al.,
TPAMI 2011), written for speed with numpy and scipy.

For one image, a threshold ``t`` and its human annotators ``G_1..G_K``:

- the prediction ``E = thin(p >= t)``, thinned to convergence as ``bwmorph(.., 'thin', inf)``
  (Guo & Hall's two-subiteration algorithm, the one ``skimage.morphology.thin`` implements; here
  all thresholds of an image are thinned together, see :func:`thin_stack`);
- for every annotator, ``E`` and ``G_k`` are matched one-to-one, a pair allowed when the pixels are
  at most ``max_dist`` apart (``0.0075`` x the image diagonal by default);
- ``cntP`` counts the predicted pixels matched to *some* annotator, ``sumP = |E|``;
  ``cntR = sum_k matched(G_k)``, ``sumR = sum_k |G_k|``.

The benchmark's ``correspondPixels`` solves a min-cost assignment in which leaving a pixel unmatched
costs far more than any allowed pair, so it first maximises the number of matched pairs, then
prefers short pairs; it builds its graph with a limited degree (an approximation). Here the same
assignment is solved over *every* pair within ``max_dist`` (see :func:`_assign`), so counts can
differ slightly from the benchmark's MATLAB code (which may miss a few matches). The PR curve is not interpolated
between thresholds either, so ODS can be a little lower than the benchmark's on coarse grids.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching


@lru_cache(maxsize=64)
def _offsets(max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    reach = int(math.floor(max_dist))
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    keep = dy**2 + dx**2 <= max_dist**2 + 1e-9
    return dy[keep].astype(np.int64), dx[keep].astype(np.int64)


def _guo_hall_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of Guo & Hall, "Parallel thinning with two-subiteration algorithms"
    (Comm. ACM 32(3), 1989), indexed by the 8-neighbourhood code of :data:`_NEIGHBOUR_WEIGHTS`.

    With ``x1..x8`` the neighbours counter-clockwise from east, a pixel is deleted when
    C = #{i : not x(2i-1) and (x(2i) or x(2i+1))} == 1, 2 <= min(N1, N2) <= 3 with
    N1 = #{k : x(2k-1) or x(2k)}, N2 = #{k : x(2k) or x(2k+1)}, and
    (x2 or x3 or not x8) and x1 is false (first subiteration) /
    (x6 or x7 or not x4) and x5 is false (second subiteration).
    """
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        x = [None] + [bool(code >> i & 1) for i in range(8)] + [bool(code & 1)]  # x[9] = x1
        c = sum((not x[2 * i - 1]) and (x[2 * i] or x[2 * i + 1]) for i in range(1, 5))
        n1 = sum(x[2 * k - 1] or x[2 * k] for k in range(1, 5))
        n2 = sum(x[2 * k] or x[2 * k + 1] for k in range(1, 5))
        removable = c == 1 and 2 <= min(n1, n2) <= 3
        first[code] = removable and not ((x[2] or x[3] or not x[8]) and x[1])
        second[code] = removable and not ((x[6] or x[7] or not x[4]) and x[5])
    return first, second


_DELETE_FIRST, _DELETE_SECOND = _guo_hall_luts()

#: (row offset, column offset) of the neighbour coded by bit 0..7: east, north-east, north,
#: north-west, west, south-west, south, south-east.
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _codes(padded: np.ndarray) -> np.ndarray:
    height, width = padded.shape[1] - 2, padded.shape[2] - 2
    codes = np.zeros((len(padded), height, width), dtype=np.uint8)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        codes |= padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] << bit
    return codes


def thin_stack(binary: np.ndarray) -> np.ndarray:
    """Thin every 2-D slice of an ``(N, H, W)`` boolean stack to convergence.

    Slice by slice this equals ``skimage.morphology.thin`` (tested); the neighbourhood codes of
    the whole stack come from eight shifted ORs per subiteration and converged slices drop out
    of the work set, instead of thousands of small ``ndimage.correlate`` calls.
    """
    padded = np.pad(np.asarray(binary, dtype=np.uint8), ((0, 0), (1, 1), (1, 1)))
    active = np.flatnonzero(padded.reshape(len(padded), -1).any(axis=1))
    while len(active):
        work = padded[active]
        before = work.reshape(len(work), -1).sum(axis=1)
        for table in (_DELETE_FIRST, _DELETE_SECOND):
            inner = work[:, 1:-1, 1:-1]
            inner[table[_codes(work)] & (inner > 0)] = 0
        padded[active] = work
        active = active[work.reshape(len(work), -1).sum(axis=1) != before]
    return padded[:, 1:-1, 1:-1].astype(bool)


def default_max_dist(height: int, width: int, tolerance: float = 0.0075) -> float:
    return tolerance * math.hypot(height, width)


def near_maps(annotators: list[np.ndarray], max_dist: float) -> list[np.ndarray]:
    """Per annotator, the pixels within ``max_dist`` of one of its boundary pixels.

    Computed once per image and reused at every threshold: a predicted pixel outside this map has
    no partner, so it never enters the matching graph.
    """
    return [
        distance_transform_edt(~gt) <= max_dist + 1e-9 if gt.any() else np.zeros_like(gt)
        for gt in annotators
    ]


def _assign(pred_idx, gt_idx, distance, n_pred: int, n_gt: int, max_dist: float) -> np.ndarray:
    """Which predicted pixels are matched, by a min-cost assignment with outliers.

    As in the benchmark's correspondPixels: every predicted pixel may instead go to its own
    outlier node and every ground-truth pixel to its own, at a cost far above any sum of pair
    distances, and outlier nodes pair up at no cost wherever a real pair exists, so a perfect
    matching always exists. The minimum cost matching therefore has the largest possible number
    of real pairs and, among those, the shortest total distance. Solved by LAPJVsp
    (``scipy.sparse.csgraph.min_weight_full_bipartite_matching``).
    """
    outlier = 10.0 * max(max_dist, 1.0) * (n_pred + n_gt + 1)
    tiny = 1e-3  # sparse weights must be non-zero
    # left nodes: predicted pixels, then ground-truth outliers; right: ground-truth pixels,
    # then predicted outliers
    left = np.concatenate([pred_idx, np.arange(n_pred), n_pred + np.arange(n_gt), n_pred + gt_idx])
    right = np.concatenate([gt_idx, n_gt + np.arange(n_pred), np.arange(n_gt), n_gt + pred_idx])
    weight = np.concatenate([distance + tiny, np.full(n_pred, outlier), np.full(n_gt, outlier),
                             np.full(len(pred_idx), tiny)])
    size = n_pred + n_gt
    graph = csr_matrix((weight, (left, right)), shape=(size, size))
    _, match = min_weight_full_bipartite_matching(graph)
    return match[:n_pred] < n_gt


def match_edges(pred: np.ndarray, annotators: list[np.ndarray], max_dist: float,
                near: list[np.ndarray] | None = None) -> np.ndarray:
    """``[cntP, sumP, cntR, sumR]`` of one binary edge map against binary annotator maps."""
    if near is None:
        near = near_maps(annotators, max_dist)
    height, width = pred.shape
    py, px = np.nonzero(pred)
    n_pred = len(py)
    dy, dx = _offsets(float(max_dist))
    matched_pred = np.zeros(n_pred, dtype=bool)
    cnt_r = 0
    sum_r = 0
    for gt, close in zip(annotators, near):
        n_gt = int(np.count_nonzero(gt))
        sum_r += n_gt
        if n_gt == 0 or n_pred == 0:
            continue
        rows = np.flatnonzero(close[py, px])
        if not len(rows):
            continue
        ny = py[rows, None] + dy[None, :]
        nx = px[rows, None] + dx[None, :]
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        index = np.full(height * width, -1, dtype=np.int32)
        index[np.flatnonzero(gt)] = np.arange(n_gt)
        cols = np.full(ny.shape, -1, dtype=np.int32)
        cols[inside] = index[ny[inside] * width + nx[inside]]
        hit = cols >= 0
        if not hit.any():
            continue
        pair_pred = np.broadcast_to(np.arange(len(rows))[:, None], hit.shape)[hit]
        distance = np.broadcast_to(np.hypot(dy, dx)[None, :], hit.shape)[hit]
        paired = _assign(pair_pred, cols[hit], distance, len(rows), n_gt, max_dist)
        matched_pred[rows[paired]] = True
        cnt_r += int(paired.sum())
    return np.array([matched_pred.sum(), n_pred, cnt_r, sum_r], dtype=np.float64)


def thresholds(count: int) -> np.ndarray:
    """The benchmark's grid: ``count`` thresholds evenly inside (0, 1), 1/(n+1) .. n/(n+1)."""
    return np.linspace(1.0 / (count + 1), 1.0 - 1.0 / (count + 1), count)


def image_counts(
    prob: np.ndarray, annotators: list[np.ndarray], levels: np.ndarray, max_dist: float
) -> np.ndarray:
    """``(T, 4)`` counts ``[cntP, sumP, cntR, sumR]`` of one probability map at each threshold."""
    near = near_maps(annotators, max_dist)
    binary = prob[None] >= np.asarray(levels, dtype=prob.dtype)[:, None, None]
    sizes = binary.reshape(len(levels), -1).sum(axis=1)
    # the maps are nested (a higher threshold keeps a subset), so equal sizes mean equal maps:
    # thin and match each distinct map once
    _, first, inverse = np.unique(sizes, return_index=True, return_inverse=True)
    thinned = thin_stack(binary[first])
    distinct = np.stack([match_edges(edges, annotators, max_dist, near) for edges in thinned])
    return distinct[inverse.ravel()]


def f_measure(cnt_p, sum_p, cnt_r, sum_r):
    """Precision, recall and F from counts (0 where a denominator is 0), elementwise."""
    cnt_p, sum_p, cnt_r, sum_r = (np.asarray(a, dtype=np.float64) for a in (cnt_p, sum_p, cnt_r, sum_r))
    precision = np.divide(cnt_p, sum_p, out=np.zeros_like(cnt_p), where=sum_p > 0)
    recall = np.divide(cnt_r, sum_r, out=np.zeros_like(cnt_r), where=sum_r > 0)
    denom = precision + recall
    f = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return precision, recall, f


def ods_ois(per_image: np.ndarray) -> tuple[float, float]:
    """ODS and OIS from per-image counts ``(N, T, 4)``, as the benchmark's collect_eval_bdry.

    ODS: the best F over thresholds of the counts summed over the dataset (one threshold for all).
    OIS: each image at its own best threshold, counts summed, then one F.
    """
    if per_image.size == 0:
        return 0.0, 0.0
    total = per_image.sum(axis=0)
    _, _, f_dataset = f_measure(*total.T)
    ods = float(f_dataset.max())
    _, _, f_image = f_measure(*np.moveaxis(per_image, -1, 0))
    best = f_image.argmax(axis=1)
    chosen = per_image[np.arange(len(per_image)), best]
    _, _, f_ois = f_measure(*chosen.sum(axis=0))
    return ods, float(f_ois)
