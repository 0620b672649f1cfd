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
two-level objective is solved exactly over *every* pair within ``max_dist`` (see
:func:`min_cost_matched`), so counts can differ slightly from the benchmark's MATLAB code (which may
miss a few matches). Pixel distances tie often, and which of several equally cheap matchings is
taken changes which predicted pixels an annotator uses, so ``cntP`` (a union over annotators) can
differ by a few pixels from another exact solver's; the other counts cannot.

ODS reads the precision-recall curve between neighbouring thresholds too, as the benchmark's
``collect_eval_bdry`` does (see :func:`ods_ois`); OIS takes each image at one of its thresholds.
Published numbers also apply edge non-maximum suppression to the soft map first
(:mod:`kdengine_edges.nms`); that is the caller's step, done before :func:`image_counts`.

How the counts are obtained quickly:

- ``cntR`` needs only the *size* of a maximum matching: a unit-capacity maximum flow
  (``scipy.sparse.csgraph.maximum_flow``, Dinic's algorithm, i.e. Hopcroft-Karp in effect).
- ``cntP`` is a union over annotators, so it also depends on *which* predicted pixels a
  min-cost matching uses. By the Dulmage-Mendelsohn decomposition, a predicted pixel is matched in
  every maximum matching unless an alternating path from an unmatched predicted pixel reaches it;
  only that part (where predicted pixels outnumber the ground-truth pixels they can take) leaves a
  choice, and there every ground-truth pixel is matched. It splits into small connected
  components, each a rectangular assignment solved by ``scipy.optimize.linear_sum_assignment``.
- All thresholds of an image are matched together per annotator (disjoint graphs in one call), and
  the ground-truth lookup tables are built once per image and annotator.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_array
from scipy.sparse.csgraph import breadth_first_order, connected_components, maximum_flow


@lru_cache(maxsize=64)
def _offsets(max_dist: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer offsets ``(dy, dx)`` within ``max_dist`` and their lengths, nearest first."""
    reach = int(math.floor(max_dist))
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    keep = dy**2 + dx**2 <= max_dist**2 + 1e-9
    dy, dx = dy[keep].astype(np.int64), dx[keep].astype(np.int64)
    length = np.hypot(dy, dx)
    order = np.argsort(length, kind="stable")
    return dy[order], dx[order], length[order]


def _guo_hall_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of Guo & Hall, "Parallel thinning with two-subiteration algorithms"
    (Comm. ACM 32(3), 1989), indexed by the 8-neighbourhood code of :data:`_NEIGHBOURS`.

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


#: a pass over whole slices (contiguous shifted ORs) beats one over listed pixels (scattered reads)
#: when the listed pixels are more than about this fraction of those slices
_DENSE_FRACTION = 1 / 8


def _codes(padded: np.ndarray) -> np.ndarray:
    """Neighbourhood code of every inner pixel of an ``(N, H + 2, W + 2)`` uint8 stack."""
    height, width = padded.shape[1] - 2, padded.shape[2] - 2
    codes = np.zeros((len(padded), height, width), dtype=np.uint8)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        codes |= padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] << bit
    return codes


def thin_stack(binary: np.ndarray) -> np.ndarray:
    """Thin every 2-D slice of an ``(N, H, W)`` boolean stack to convergence.

    Slice by slice this equals ``skimage.morphology.thin`` (tested). A pass only needs to look at
    the pixels whose deletion can be in question: at first the foreground pixels with a background
    4-neighbour (no other can be deleted), afterwards the foreground pixels whose neighbourhood the
    previous pass changed (one that neither subiteration deleted stays until then). While those
    are many (the first passes over noisy maps) a pass runs on their whole slices with shifted
    ORs; once they are few (the slow erosion of solid blobs at low thresholds) it reads and
    updates them alone, by flat index into the padded stack. Either way no slice is worked on
    once it has converged.
    """
    binary = np.asarray(binary, dtype=bool)
    count, height, width = binary.shape
    padded = np.zeros((count, height + 2, width + 2), dtype=np.uint8)
    padded[:, 1:-1, 1:-1] = binary
    flat = padded.reshape(-1)
    slice_size = (height + 2) * (width + 2)
    steps = np.array([dy * (width + 2) + dx for dy, dx in _NEIGHBOURS], dtype=np.int64)
    clear = [~np.uint8(1 << ((bit + 4) % 8)) for bit in range(8)]  # the bit a neighbour sees
    codes = np.zeros_like(padded)
    codes[:, 1:-1, 1:-1] = _codes(padded)
    flat_codes = codes.reshape(-1)
    listed = np.zeros(flat.size, dtype=bool)

    scratch = np.zeros(flat.size, dtype=np.int32)

    def distinct(pixels: np.ndarray) -> np.ndarray:
        order = np.arange(len(pixels), dtype=np.int32)
        scratch[pixels] = order  # the last write wins: one survivor per pixel
        return pixels[scratch[pixels] == order]

    # foreground pixels with a background 4-neighbour (bits 0, 2, 4, 6)
    candidates = np.flatnonzero(flat.astype(bool) & ((flat_codes & 0b01010101) != 0b01010101))
    while len(candidates):
        slices = np.flatnonzero(np.bincount(candidates // slice_size, minlength=count))
        if len(candidates) > _DENSE_FRACTION * len(slices) * slice_size:
            work = padded[slices]
            for table in (_DELETE_FIRST, _DELETE_SECOND):
                inner = work[:, 1:-1, 1:-1]
                inner[table[_codes(work)] & (inner > 0)] = 0
            padded[slices] = work
            fresh = _codes(work)
            moved = (fresh != codes[slices, 1:-1, 1:-1]) & (work[:, 1:-1, 1:-1] > 0)
            codes[slices, 1:-1, 1:-1] = fresh
            layer, row, col = np.nonzero(moved)
            candidates = slices[layer] * slice_size + (row + 1) * (width + 2) + col + 1
            continue
        listed[candidates] = True
        touched, removed = [], []
        for table in (_DELETE_FIRST, _DELETE_SECOND):
            gone = candidates[table[flat_codes[candidates]]]
            if not len(gone):
                continue
            flat[gone] = 0
            removed.append(gone)
            for step, mask in zip(steps, clear):
                flat_codes[gone + step] &= mask
            near = (gone[:, None] + steps[None, :]).ravel()
            touched.append(near[flat[near] == 1])
            new = distinct(touched[-1][~listed[touched[-1]]])
            listed[new] = True
            candidates = np.concatenate([candidates[flat[candidates] == 1], new])
        listed[candidates] = False
        for gone in removed:
            listed[gone] = False
        # the next pass: pixels whose neighbourhood changed during this one
        candidates = np.concatenate(touched) if touched else candidates[:0]
        candidates = distinct(candidates[flat[candidates] == 1])
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


#: connected components are matched in batches of about this many nodes: one flow over the whole
#: graph pays for its slowest component's phases everywhere, one flow per component pays a call
_BATCH_NODES = 4000


def _maximum_matching(left: np.ndarray, right: np.ndarray, n_left: int, n_right: int) -> np.ndarray:
    """A maximum matching as the right node of every left node (-1: unmatched).

    Unit-capacity maximum flows (source -> left -> right -> sink) by Dinic's algorithm, which is
    Hopcroft-Karp in effect, over batches of whole connected components. (Not
    ``maximum_bipartite_matching``: its depth-first phase does not remember dead ends and takes
    exponential time on ladder-like graphs, scipy issue #26147, which two annotators' outlines of
    the same contour form.)
    """
    mate = np.full(n_left, -1, dtype=np.int64)
    size = n_left + n_right
    graph = csr_array((np.ones(len(left), dtype=np.int8), (left, n_left + right)),
                      shape=(size, size))
    _, label = connected_components(graph, directed=False)
    nodes = np.flatnonzero(np.bincount(np.concatenate([left, n_left + right]), minlength=size))
    comp_size = np.bincount(label[nodes], minlength=label.max() + 1)
    comp_batch = (np.cumsum(comp_size) - comp_size) // _BATCH_NODES
    n_batch = int(comp_batch.max()) + 1
    # every node (with an edge) numbered inside its batch: left nodes first, then right nodes
    node_batch = comp_batch[label[nodes]]
    is_left = nodes < n_left
    node_batch_key = node_batch * 2 + ~is_left
    order, place, counts, _ = _grouped(node_batch_key, 2 * n_batch)
    local = np.zeros(size, dtype=np.int64)
    local[nodes] = place
    n_left_of, n_right_of = counts[0::2], counts[1::2]
    grouped_nodes = nodes[order]
    left_start = (np.cumsum(counts) - counts)[0::2]

    edge_batch = comp_batch[label[left]]
    edge_order = np.argsort(edge_batch, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_batch[edge_order], prepend=-1) != 0)
    for lo, hi in zip(bounds, np.r_[bounds[1:], len(edge_order)]):
        edges = edge_order[lo:hi]
        b = edge_batch[edges[0]]
        nl, nr = int(n_left_of[b]), int(n_right_of[b])
        source, sink = 0, nl + nr + 1
        tails = np.concatenate([np.zeros(nl, dtype=np.int64), 1 + local[left[edges]],
                                1 + nl + np.arange(nr)])
        heads = np.concatenate([1 + np.arange(nl), 1 + nl + local[n_left + right[edges]],
                                np.full(nr, sink, dtype=np.int64)])
        network = csr_array((np.ones(len(tails), dtype=np.int32), (tails, heads)),
                            shape=(sink + 1, sink + 1))
        flow = maximum_flow(network, source, sink, method="dinic").flow.tocoo()
        used = ((flow.data > 0) & (flow.row > 0) & (flow.row <= nl) & (flow.col > nl)
                & (flow.col < sink))
        batch_left = grouped_nodes[left_start[b]:left_start[b] + nl]
        batch_right = grouped_nodes[left_start[b] + nl:left_start[b] + nl + nr] - n_left
        mate[batch_left[flow.row[used] - 1]] = batch_right[flow.col[used] - 1 - nl]
    return mate


def _alternating_reach(graph: csr_array, mate: np.ndarray) -> np.ndarray:
    """Nodes (left, then right) on an alternating path from an unmatched left node.

    ``graph`` is the ``(n_left, n_right)`` biadjacency and ``mate`` a maximum matching (the right
    node of every left node, -1 where unmatched). The walk goes from a left node to a right node
    along any edge and back along matched edges only: one breadth-first search over a directed
    graph whose CSR arrays are assembled directly. The set does not depend on which maximum
    matching ``mate`` is.
    """
    n_left, n_right = graph.shape
    free = np.flatnonzero(mate < 0)
    if not len(free):
        return np.zeros(n_left + n_right, dtype=bool)
    back = np.full(n_right, -1, dtype=np.int64)
    paired = np.flatnonzero(mate >= 0)
    back[mate[paired]] = paired
    root = n_left + n_right  # an extra node with an arc to every unmatched left node
    indptr = np.concatenate([graph.indptr, graph.indptr[-1] + np.cumsum(back >= 0), [0]])
    indptr[-1] = indptr[-2] + len(free)
    indices = np.concatenate([graph.indices + n_left, back[back >= 0], free])
    walk = csr_array((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(root + 1,) * 2)
    seen = np.zeros(root + 1, dtype=bool)
    seen[breadth_first_order(walk, root, directed=True, return_predecessors=False)] = True
    return seen[:root]


def min_cost_matched(left: np.ndarray, right: np.ndarray, cost: np.ndarray,
                     n_left: int, n_right: int) -> np.ndarray:
    """Which left nodes a min-cost maximum matching uses (boolean mask of length ``n_left``).

    The edges are ``left[e] - right[e]`` with cost ``cost[e]`` (pairs unique). The matching has
    the largest possible number of pairs and, among those, the least total cost: the objective of
    the benchmark's assignment with outlier nodes. Among equally cheap matchings the choice is
    fixed by the edge set and the order of the node numbers, not by the order of the edges.

    A maximum matching (:func:`_maximum_matching`) gives the size; the left nodes an alternating
    path from an unmatched left node reaches (``A``) are the only ones whose use can vary: the
    others are matched in every maximum matching, and every maximum matching pairs all right
    nodes reached from ``A`` with ``A`` (Dulmage-Mendelsohn). So only ``A`` is solved for cost,
    per connected component: one right node takes its cheapest partner, larger components are
    rectangular assignments for ``linear_sum_assignment``.
    """
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    cost = np.asarray(cost, dtype=np.float64)
    if not len(left):
        return np.zeros(n_left, dtype=bool)
    graph = csr_array((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n_left, n_right))
    mate = _maximum_matching(left, right, n_left, n_right)
    size = n_left + n_right
    reach = _alternating_reach(graph, mate)
    in_a = reach[:n_left]
    used = ~in_a
    edge = in_a[left]  # an edge leaving A always ends at a right node reached from A
    if not edge.any():
        return used
    a_left, a_right, a_cost = left[edge], right[edge], cost[edge]
    sub = csr_array((np.ones(len(a_left), dtype=np.int8), (a_left, n_left + a_right)),
                    shape=(size, size))
    n_comp, label = connected_components(sub, directed=False)
    # the nodes of A grouped by component; a node's place in its group is its column / row
    left_nodes, right_nodes = np.flatnonzero(in_a), np.flatnonzero(reach[n_left:])
    left_order, left_place, left_size, left_start = _grouped(label[left_nodes], n_comp)
    _, right_place, right_size, _ = _grouped(label[n_left + right_nodes], n_comp)
    left_grouped = left_nodes[left_order]
    column = np.zeros(n_left, dtype=np.int64)
    column[left_nodes] = left_place
    row = np.zeros(n_right, dtype=np.int64)
    row[right_nodes] = right_place
    comp = label[a_left]
    rows_of = right_size[comp]

    # components with one right node: its cheapest edge (ties: the lowest left node)
    single = np.flatnonzero(rows_of == 1)
    if len(single):
        single = single[np.lexsort((a_left[single], a_cost[single], comp[single]))]
        first = np.diff(comp[single], prepend=-1) != 0
        used[a_left[single[first]]] = True

    # larger components: rectangular assignments (rows: right nodes, columns: left nodes)
    multi = np.flatnonzero(rows_of > 1)
    if len(multi):
        multi = multi[np.argsort(comp[multi], kind="stable")]
        e_row, e_col = row[a_right[multi]], column[a_left[multi]]
        e_cost, e_comp = a_cost[multi], comp[multi]
        starts = np.flatnonzero(np.diff(e_comp, prepend=-1) != 0)
        for lo, hi in zip(starts, np.r_[starts[1:], len(multi)]):
            c = e_comp[lo]
            block = np.full((right_size[c], left_size[c]), np.inf)
            block[e_row[lo:hi], e_col[lo:hi]] = e_cost[lo:hi]
            _, picked = linear_sum_assignment(block)
            used[left_grouped[left_start[c] + picked]] = True
    return used


def _grouped(labels: np.ndarray, count: int):
    """Order grouping equal ``labels``, each item's place in its group, group sizes and starts."""
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=count)
    starts = np.cumsum(sizes) - sizes
    place = np.empty(len(labels), dtype=np.int64)
    place[order] = np.arange(len(labels)) - starts[labels[order]]
    return order, place, sizes, starts


def _stack_counts(edges: np.ndarray, annotators: list[np.ndarray], max_dist: float,
                  near: list[np.ndarray]) -> np.ndarray:
    """``(N, 4)`` counts ``[cntP, sumP, cntR, sumR]`` of an ``(N, H, W)`` stack of edge maps.

    Per annotator, the maps' pixels near its boundary and their candidate partners (one lookup per
    offset within ``max_dist``, for all maps at once) form one graph of ``N`` disjoint parts.
    """
    count, height, width = edges.shape
    dy, dx, length = _offsets(float(max_dist))
    reach = int(math.floor(max_dist))
    layer, py, px = np.nonzero(edges)
    sum_p = np.bincount(layer, minlength=count)
    matched_any = np.zeros(len(layer), dtype=bool)
    cnt_r = np.zeros(count, dtype=np.int64)
    sum_r = 0
    for gt, close in zip(annotators, near):
        n_gt = int(np.count_nonzero(gt))
        sum_r += n_gt
        if n_gt == 0 or not len(layer):
            continue
        rows = np.flatnonzero(close[py, px])
        if not len(rows):
            continue
        # ground-truth index of every pixel, padded so that every offset stays inside
        lookup = np.full((height + 2 * reach, width + 2 * reach), -1, dtype=np.int64)
        lookup[reach:reach + height, reach:reach + width][gt] = np.arange(n_gt)
        lookup = lookup.reshape(-1)
        base = (py[rows] + reach) * (width + 2 * reach) + px[rows] + reach
        pred_ids, gt_ids, dists = [], [], []
        for oy, ox, d in zip(dy, dx, length):
            partner = lookup[base + oy * (width + 2 * reach) + ox]
            hit = np.flatnonzero(partner >= 0)
            pred_ids.append(hit)
            gt_ids.append(partner[hit])
            dists.append(np.full(len(hit), d))
        pred_ids = np.concatenate(pred_ids)
        gt_ids = np.concatenate(gt_ids)
        used = min_cost_matched(pred_ids, layer[rows][pred_ids] * n_gt + gt_ids,
                                np.concatenate(dists), len(rows), count * n_gt)
        matched = rows[used]
        matched_any[matched] = True
        cnt_r += np.bincount(layer[matched], minlength=count)
    cnt_p = np.bincount(layer[matched_any], minlength=count)
    return np.stack([cnt_p, sum_p, cnt_r, np.full(count, sum_r)], axis=1).astype(np.float64)


def match_edges(pred: np.ndarray, annotators: list[np.ndarray], max_dist: float,
                near: list[np.ndarray] | None = None) -> np.ndarray:
    """``[cntP, sumP, cntR, sumR]`` of one binary edge map against binary annotator maps."""
    if near is None:
        near = near_maps(annotators, max_dist)
    return _stack_counts(np.asarray(pred, dtype=bool)[None], annotators, max_dist, near)[0]


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
    distinct = _stack_counts(thinned, annotators, max_dist, near)
    return distinct[inverse.ravel()]


def f_measure(cnt_p, sum_p, cnt_r, sum_r):
    """Precision, recall and F from counts (0 where a denominator is 0), elementwise."""
    cnt_p, sum_p, cnt_r, sum_r = (np.asarray(a, dtype=np.float64) for a in (cnt_p, sum_p, cnt_r, sum_r))
    precision = np.divide(cnt_p, sum_p, out=np.zeros_like(cnt_p), where=sum_p > 0)
    recall = np.divide(cnt_r, sum_r, out=np.zeros_like(cnt_r), where=sum_r > 0)
    denom = precision + recall
    f = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return precision, recall, f


#: points per step between neighbouring thresholds where ODS reads the interpolated curve
_INTERPOLATION_POINTS = 101


def best_interpolated_f(precision: np.ndarray, recall: np.ndarray) -> float:
    """The best F on the precision-recall curve drawn through the thresholds' points.

    Between neighbouring thresholds precision and recall are interpolated linearly (the F of the
    interpolated pair, not interpolated F), as the benchmark's ``collect_eval_bdry`` does: on a
    coarse grid the best dataset-wide threshold usually lies between two grid points.
    """
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    weight = np.linspace(0.0, 1.0, _INTERPOLATION_POINTS)[None, :]
    p = precision[:-1, None] * (1 - weight) + precision[1:, None] * weight
    r = recall[:-1, None] * (1 - weight) + recall[1:, None] * weight
    # the grid's own points too: a single threshold has no neighbour to interpolate to
    p, r = np.concatenate([p.ravel(), precision]), np.concatenate([r.ravel(), recall])
    denom = p + r
    f = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f.max(initial=0.0))


def ods_ois(per_image: np.ndarray) -> tuple[float, float]:
    """ODS and OIS from per-image counts ``(N, T, 4)``, as the benchmark's collect_eval_bdry.

    ODS: the best F of the counts summed over the dataset, one threshold for all, read on the
    precision-recall curve interpolated between thresholds (:func:`best_interpolated_f`).
    OIS: each image at its own best threshold (on the grid), counts summed, then one F.
    """
    if per_image.size == 0:
        return 0.0, 0.0
    total = per_image.sum(axis=0)
    precision, recall, _ = f_measure(*total.T)
    ods = best_interpolated_f(precision, recall)
    _, _, f_image = f_measure(*np.moveaxis(per_image, -1, 0))
    best = f_image.argmax(axis=1)
    chosen = per_image[np.arange(len(per_image)), best]
    _, _, f_ois = f_measure(*chosen.sum(axis=0))
    return ods, float(f_ois)
