import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import ndimage
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from kdengine import DataInfo
from kdengine_edges import boundary
from kdengine_edges.boundary import (best_interpolated_f, default_max_dist, f_measure,
                                     image_counts, match_edges, min_cost_matched, ods_ois,
                                     thin_stack, thresholds)
from kdengine_edges.metrics import Dice, OdsOis

INFO = DataInfo(task="edges", in_channels=3, num_classes=1)


def square(size=100, top=30, left=30, side=40):
    """A one-pixel square outline."""
    edge = np.zeros((size, size), dtype=bool)
    edge[top, left:left + side] = edge[top + side - 1, left:left + side] = True
    edge[top:top + side, left] = edge[top:top + side, left + side - 1] = True
    return edge


def lines(height=100, width=100):
    """Separate straight one-pixel lines: thinning leaves them unchanged (corners it would cut)."""
    edge = np.zeros((height, width), dtype=bool)
    edge[height // 4, 5:width - 5] = True
    edge[height // 2:height - 5, width // 2] = True
    return edge


def logits_from(edges: np.ndarray, on=0.95, off=0.02) -> torch.Tensor:
    prob = np.where(edges, on, off).astype(np.float32)
    return torch.logit(torch.from_numpy(prob))[None, None]


def test_tolerance_is_a_fraction_of_the_diagonal():
    assert default_max_dist(300, 400) == pytest.approx(0.0075 * 500)


def test_perfect_prediction_scores_one():
    gt = square()
    counts = match_edges(gt, [gt, gt], max_dist=2.0)
    assert counts.tolist() == [gt.sum(), gt.sum(), 2 * gt.sum(), 2 * gt.sum()]
    assert f_measure(*counts)[2] == pytest.approx(1.0)


def test_empty_prediction_scores_zero():
    gt = square()
    counts = match_edges(np.zeros_like(gt), [gt], max_dist=2.0)
    assert counts.tolist() == [0, 0, 0, gt.sum()]
    assert f_measure(*counts)[2] == 0.0


def test_one_pixel_shift_within_tolerance_matches():
    gt = square()
    shifted = np.roll(gt, 1, axis=1)
    assert f_measure(*match_edges(shifted, [gt], max_dist=1.5))[2] == pytest.approx(1.0)


def test_shift_beyond_tolerance_does_not_match():
    gt = np.zeros((100, 100), dtype=bool)
    gt[50, 10:90] = True
    shifted = np.roll(gt, 3, axis=0)
    assert f_measure(*match_edges(shifted, [gt], max_dist=2.0))[2] == 0.0


def test_matching_is_one_to_one():
    # a doubled (two-pixel-wide) line matches the single ground-truth line only once
    gt = np.zeros((20, 40), dtype=bool)
    gt[10, 5:35] = True
    double = gt | np.roll(gt, 1, axis=0)
    cnt_p, sum_p, cnt_r, sum_r = match_edges(double, [gt], max_dist=1.5)
    assert (cnt_p, sum_p, cnt_r, sum_r) == (30, 60, 30, 30)


def test_known_precision_and_recall():
    # prediction: half of the ground-truth line plus an unrelated line of the same length
    gt = np.zeros((60, 60), dtype=bool)
    gt[10, 10:50] = True  # 40 px
    pred = np.zeros_like(gt)
    pred[10, 10:30] = True  # 20 px, all matched
    pred[40, 10:30] = True  # 20 px, far away
    precision, recall, f = f_measure(*match_edges(pred, [gt], max_dist=2.0))
    assert precision == pytest.approx(0.5)
    assert recall == pytest.approx(0.5)
    assert f == pytest.approx(0.5)


def test_a_prediction_pixel_counts_once_across_annotators():
    a = np.zeros((30, 30), dtype=bool)
    a[10, 5:25] = True  # 20 px
    b = np.zeros_like(a)
    b[20, 5:15] = True  # 10 px
    pred = a.copy()
    cnt_p, sum_p, cnt_r, sum_r = match_edges(pred, [a, b], max_dist=1.0)
    assert (cnt_p, sum_p, cnt_r, sum_r) == (20, 20, 20, 30)


def test_thresholds_grid_and_thinning():
    levels = thresholds(3)
    np.testing.assert_allclose(levels, [0.25, 0.5, 0.75])
    gt = square()
    thick = gt | np.roll(gt, 1, axis=0) | np.roll(gt, 1, axis=1)
    prob = np.where(thick, 0.9, 0.0)
    counts = image_counts(prob, [gt], levels, max_dist=1.5)
    # thinning brings the 2-3 px wide outline back to about one pixel: precision close to 1
    precision, recall, _ = f_measure(*counts.T)
    assert (precision > 0.95).all() and (recall > 0.95).all()


def test_ods_uses_one_threshold_and_ois_one_per_image():
    # image A is right at the low threshold only, image B at the high threshold only
    per_image = np.array([
        [[10, 10, 10, 10], [0, 0, 0, 10]],
        [[0, 40, 0, 10], [10, 10, 10, 10]],
    ], dtype=float)
    ods, ois = ods_ois(per_image)
    # threshold 0: P = 10/50, R = 10/20 -> F = 2/7; threshold 1: P = 1, R = 0.5 -> F = 2/3
    assert ods == pytest.approx(2 / 3)
    assert ois == pytest.approx(1.0)


def eval_targets(gt: np.ndarray, annotators: int = 2) -> dict:
    return {"mask": torch.from_numpy(gt).float()[None, None],
            "annotators": torch.from_numpy(np.stack([gt] * annotators)).float()[None]}


def test_ods_reads_the_curve_between_thresholds():
    # (P, R) = (1, 0.2) at one threshold and (0.2, 1) at the next: F = 1/3 at both, but the
    # interpolated curve passes (0.6, 0.6), F = 0.6, as the benchmark's collect_eval_bdry finds
    per_image = np.array([[[10, 10, 2, 10], [10, 50, 10, 10]]], dtype=float)
    ods, ois = ods_ois(per_image)
    assert ods == pytest.approx(0.6)
    assert ois == pytest.approx(1 / 3)
    assert best_interpolated_f(np.array([0.5]), np.array([0.5])) == pytest.approx(0.5)
    assert best_interpolated_f(np.zeros(3), np.zeros(3)) == 0.0


def test_interpolated_ods_equals_pyedgeeval():
    metrics = pytest.importorskip("pyEdgeEval.common.metrics")
    rng = np.random.default_rng(5)
    for count in (2, 5, 25):
        levels = thresholds(count)
        recall = np.sort(rng.random(count))[::-1]
        precision = np.sort(rng.random(count))
        expected = metrics.interpolated_max_scores(levels, recall, precision)[3]
        assert best_interpolated_f(precision, recall) == pytest.approx(expected, abs=1e-12)


def test_ods_ois_metric_end_to_end():
    # without NMS: the raw map thresholded and thinned, the sharp lines are matched exactly
    gt = lines()
    metric = OdsOis({"thresholds": 9, "nms": False}).build(INFO)
    metric.update(logits_from(gt), eval_targets(gt))
    result = metric.compute()
    assert set(result) == {"ods", "ois"}
    assert float(result["ods"]) == pytest.approx(1.0)
    metric.reset()
    metric.update(logits_from(np.zeros_like(gt)), eval_targets(gt))
    assert float(metric.compute()["ods"]) == 0.0


def test_ods_ois_applies_nms_by_default():
    assert OdsOis({}).params.nms is True
    gt = lines()
    default = OdsOis({"thresholds": 9}).build(INFO)
    default.update(logits_from(gt), eval_targets(gt))
    # NMS keeps the sharp lines; only their tapering ends (smoothed, then suppressed along the
    # line) cost a pixel or two of recall
    assert 0.98 < float(default.compute()["ods"]) < 1.0


def blurred_noisy_line(size=100, sigma=3.0, noise=0.15, seed=0):
    """A slightly tilted one-pixel line as ground truth, and a thick noisy response to it."""
    from skimage.draw import line

    gt = np.zeros((size, size), dtype=bool)
    rows, cols = line(size // 2 - 3, 10, size // 2 + 3, size - 11)
    gt[rows, cols] = True
    prob = ndimage.gaussian_filter(gt.astype(float), sigma)
    prob /= prob.max()
    prob += noise * np.random.default_rng(seed).standard_normal(prob.shape)
    return gt, np.clip(prob, 1e-4, 1 - 1e-4)


def test_nms_scores_a_thick_noisy_line_near_one_and_raw_thresholding_far_lower():
    gt, prob = blurred_noisy_line()
    logits = torch.logit(torch.from_numpy(prob).float())[None, None]
    scores = {}
    for nms in (True, False):
        metric = OdsOis({"thresholds": 19, "nms": nms}).build(INFO)
        metric.update(logits, eval_targets(gt, annotators=1))
        scores[nms] = float(metric.compute()["ods"])
    assert scores[True] > 0.95
    assert scores[False] < 0.8


@pytest.mark.parametrize("nms", [False, True])
def test_ods_ois_ignores_padding_and_missing_annotators(nms):
    # a line close to the bottom of the image: the NMS border fade must act at the image's own
    # border, not at the batch's padded one, so the counts equal those of the unpadded image
    gt = lines(60, 60)
    gt[57, 10:50] = True
    annotators = torch.full((1, 3, 80, 90), -1.0)
    annotators[0, 0, :60, :60] = torch.from_numpy(gt).float()
    annotators[0, 1, :60, :60] = torch.from_numpy(gt).float()
    pred = np.zeros((80, 90), dtype=bool)
    pred[:60, :60] = gt
    pred[70, :] = True  # in the padding: must not count
    padded = OdsOis({"thresholds": 5, "nms": nms}).build(INFO)
    padded.update(logits_from(pred), {"mask": annotators[:, :1], "annotators": annotators})
    alone = OdsOis({"thresholds": 5, "nms": nms}).build(INFO)
    alone.update(logits_from(gt), eval_targets(gt))
    np.testing.assert_array_equal(padded.counts[0].numpy(), alone.counts[0].numpy())
    if not nms:
        assert float(padded.compute()["ods"]) == pytest.approx(1.0)


def test_ods_ois_accepts_plain_targets():
    gt = lines()
    metric = OdsOis({"thresholds": 5, "nms": False}).build(INFO)
    metric.update(logits_from(gt), torch.from_numpy(gt).float()[None, None])
    assert float(metric.compute()["ois"]) == pytest.approx(1.0)


def test_dice_formula_and_threshold():
    logits = torch.tensor([[[[3.0, 3.0, -3.0, -3.0, 0.2]]]])
    target = torch.tensor([[[[1.0, 0.0, 1.0, 0.0, 0.6]]]])
    metric = Dice().build(INFO)
    metric.update(logits, target)
    # tp = 2 (first, last), fp = 1, fn = 1 -> 2 * 2 / (4 + 1 + 1)
    assert float(metric.compute()) == pytest.approx(4 / 6)


def test_dice_ignores_padding_and_reads_eval_dicts():
    logits = torch.tensor([[[[3.0, -3.0, 3.0]]]])
    mask = torch.tensor([[[[1.0, 0.0, -1.0]]]])
    metric = Dice().build(INFO)
    metric.update(logits, {"mask": mask, "annotators": mask})
    assert float(metric.compute()) == pytest.approx(1.0)
    metric.update(torch.full((1, 1, 1, 3), -3.0), {"mask": torch.ones(1, 1, 1, 3),
                                                    "annotators": torch.ones(1, 1, 1, 3)})
    assert float(metric.compute()) == pytest.approx(2 / 5)


def test_metric_params_are_validated():
    with pytest.raises(ValidationError):
        OdsOis({"thresholds": 0})
    with pytest.raises(ValidationError):
        OdsOis({"nms": "sometimes"})
    with pytest.raises(ValidationError):
        Dice({"threshold": 1.5})


def test_thinning_equals_skimage():
    from skimage.morphology import thin

    rng = np.random.default_rng(0)
    maps = []
    for _ in range(12):
        smooth = ndimage.gaussian_filter(rng.random((30, 41)), rng.uniform(0.5, 3))
        maps.append(smooth > np.quantile(smooth, rng.uniform(0.2, 0.9)))
    maps.append(np.ones((30, 41), dtype=bool))
    maps.append(np.zeros((30, 41), dtype=bool))
    stack = np.stack(maps)
    expected = np.stack([thin(m) for m in stack])
    np.testing.assert_array_equal(thin_stack(stack), expected)


# --- the matching against an exact reference ----------------------------------------------
#
# reference_assignment is the benchmark's formulation solved the slow way (it took minutes per
# threshold on dense predictions): every pixel may instead go to an outlier node of its own at a
# cost above any sum of pair costs, so the min-cost perfect matching of the augmented graph has the
# most pairs and, among those, the least total cost.

#: every length an integer offset within a few pixels can have: the ties of real images
PIXEL_DISTANCES = np.array([0.0, 1.0, np.sqrt(2), 2.0, np.sqrt(5), np.sqrt(8), 3.0])


def reference_assignment(left, right, cost, n_left, n_right):
    """(mask of matched left nodes, number of pairs, total pair cost) of the benchmark matching."""
    left, right, cost = (np.asarray(a) for a in (left, right, cost))
    if not len(left):
        return np.zeros(n_left, dtype=bool), 0, 0.0
    outlier = 10.0 * (1.0 + cost.max()) * (n_left + n_right + 1)
    tiny = 1e-3  # sparse weights must be non-zero
    rows = np.concatenate([left, np.arange(n_left), n_left + np.arange(n_right), n_left + right])
    cols = np.concatenate([right, n_right + np.arange(n_left), np.arange(n_right), n_right + left])
    weight = np.concatenate([cost + tiny, np.full(n_left, outlier), np.full(n_right, outlier),
                             np.full(len(left), tiny)])
    size = n_left + n_right
    _, match = min_weight_full_bipartite_matching(
        csr_array((weight, (rows, cols)), shape=(size, size)))
    paired = match[:n_left] < n_right
    pair_cost = dict(zip(zip(left.tolist(), right.tolist()), cost.tolist()))
    total = sum(pair_cost[(i, int(match[i]))] for i in np.flatnonzero(paired))
    return paired, int(paired.sum()), total


def random_graph(rng, costs=None):
    n_left, n_right = (int(n) for n in rng.integers(1, 40, size=2))
    i, j = np.nonzero(rng.random((n_left, n_right)) < rng.uniform(0.02, 0.4))
    cost = rng.random(len(i)) * 3 if costs is None else rng.choice(costs, len(i))
    return i, j, cost, n_left, n_right


def brute_pairs(pred, gt, max_dist):
    """Every (predicted, ground-truth) pixel pair within ``max_dist``, from all pairwise distances.

    Predicted pixels are numbered in raster order among those that have a partner, ground-truth
    pixels in raster order among all.
    """
    p, g = np.argwhere(pred), np.argwhere(gt)
    sq = ((p[:, None, :] - g[None, :, :]) ** 2).sum(axis=-1)
    i, j = np.nonzero(sq <= max_dist**2 + 1e-9)
    has_partner = np.unique(i)
    return np.searchsorted(has_partner, i), j, np.sqrt(sq[i, j]), has_partner


def random_image(rng, height, width, annotators):
    pred = rng.random((height, width)) < rng.uniform(0.02, 0.5)
    gts = []
    for _ in range(annotators):
        gt = np.zeros((height, width), dtype=bool)
        gt[rng.random((height, width)) < rng.uniform(0.01, 0.2)] = True
        gts.append(gt)
    return pred, gts


@pytest.mark.parametrize("seed", range(6))
def test_min_cost_matched_equals_the_reference_assignment(seed):
    # continuous random costs: the optimum is unique, so the matched sets must be equal
    rng = np.random.default_rng(seed)
    for _ in range(40):
        i, j, cost, n_left, n_right = random_graph(rng)
        expected, _, _ = reference_assignment(i, j, cost, n_left, n_right)
        np.testing.assert_array_equal(min_cost_matched(i, j, cost, n_left, n_right), expected)


def test_components_matched_in_many_small_batches(monkeypatch):
    # the maximum matching runs over batches of whole components; tiny batches must not change it
    rng = np.random.default_rng(42)
    graphs = [random_graph(rng) for _ in range(30)]
    expected = [reference_assignment(*g)[0] for g in graphs]
    monkeypatch.setattr(boundary, "_BATCH_NODES", 3)
    for graph, mask in zip(graphs, expected):
        np.testing.assert_array_equal(min_cost_matched(*graph), mask)


@pytest.mark.parametrize("seed", range(6))
def test_min_cost_matched_is_optimal_with_tied_costs(seed):
    # pixel distances tie a lot: the matched set must be that of *some* optimal matching, i.e.
    # as many pairs as the reference, and the reference restricted to it reaches the same cost
    rng = np.random.default_rng(100 + seed)
    for _ in range(40):
        i, j, cost, n_left, n_right = random_graph(rng, PIXEL_DISTANCES)
        _, pairs, best = reference_assignment(i, j, cost, n_left, n_right)
        used = min_cost_matched(i, j, cost, n_left, n_right)
        assert used.sum() == pairs
        keep = used[i]
        _, kept_pairs, kept_cost = reference_assignment(i[keep], j[keep], cost[keep],
                                                        n_left, n_right)
        assert kept_pairs == pairs
        assert kept_cost == pytest.approx(best, abs=1e-9)


def test_min_cost_matched_maximises_pairs_before_cost():
    # left 0 - right 0 is the cheapest pair, but taking it leaves left 1 alone: both must pair
    used = min_cost_matched([0, 0, 1], [0, 1, 0], [1.0, 5.0, 1.0], 2, 2)
    assert used.tolist() == [True, True]
    # one right node, three candidates: the nearest one
    used = min_cost_matched([0, 1, 2], [0, 0, 0], [2.0, 1.0, 1.5], 3, 1)
    assert used.tolist() == [False, True, False]
    assert min_cost_matched([], [], [], 3, 2).tolist() == [False, False, False]


@pytest.mark.parametrize("annotators", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_counts_equal_the_reference_on_random_images(annotators, seed):
    rng = np.random.default_rng(10 * annotators + seed)
    for _ in range(6):
        height, width = (int(n) for n in rng.integers(12, 40, size=2))
        pred, gts = random_image(rng, height, width, annotators)
        max_dist = float(rng.choice([1.0, 1.5, 2.0, 3.2]))
        cnt_p, sum_p, cnt_r, sum_r = match_edges(pred, gts, max_dist)
        n_pred = int(pred.sum())
        ref_matched = np.zeros(n_pred, dtype=bool)
        union = np.zeros(n_pred, dtype=bool)
        ref_cnt_r = 0
        per_annotator = []
        for gt in gts:
            i, j, dist, has_partner = brute_pairs(pred, gt, max_dist)
            used, pairs, _ = reference_assignment(i, j, dist, len(has_partner), int(gt.sum()))
            ref_matched[has_partner[used]] = True
            ref_cnt_r += pairs
            per_annotator.append(pairs)
            union[has_partner[min_cost_matched(i, j, dist, len(has_partner), int(gt.sum()))]] = True
        assert (sum_p, cnt_r, sum_r) == (n_pred, ref_cnt_r, sum(int(g.sum()) for g in gts))
        # which predicted pixels a matching uses is only decided up to ties; with one annotator
        # that does not change the count, with several the union may differ from the reference's
        # by tie-breaking, but it is the union of optimal matchings and within the obvious bounds
        if annotators == 1:
            assert cnt_p == ref_matched.sum()
        assert cnt_p == union.sum()
        assert max(per_annotator) <= cnt_p <= min(n_pred, sum(per_annotator))


def test_two_annotators_share_the_nearest_predicted_pixels():
    # both annotators drew the same line; the prediction has it plus a parallel line one pixel
    # away. A maximum matching alone could pair each annotator with a different line; the
    # benchmark's cost makes both take the exact line, so only half of the prediction is matched
    gt = np.zeros((20, 40), dtype=bool)
    gt[10, 5:35] = True
    pred = gt | np.roll(gt, 1, axis=0)
    assert match_edges(pred, [gt, gt.copy()], max_dist=1.5).tolist() == [30, 60, 60, 60]


def test_empty_ground_truth_scores_zero():
    pred = square()
    empty = np.zeros_like(pred)
    counts = match_edges(pred, [empty], max_dist=2.0)
    assert counts.tolist() == [0, pred.sum(), 0, 0]
    assert f_measure(*counts)[2] == 0.0
    counts = image_counts(np.where(pred, 0.9, 0.1), [empty, empty], thresholds(5), max_dist=2.0)
    assert (counts[:, [0, 2, 3]] == 0).all() and (counts[:, 1] > 0).all()
    no_annotators = image_counts(np.zeros((10, 10)), [], thresholds(3), max_dist=2.0)
    assert no_annotators.tolist() == [[0] * 4] * 3


def test_one_annotator_empty_the_other_not():
    gt = square()
    counts = match_edges(gt, [gt, np.zeros_like(gt)], max_dist=2.0)
    assert counts.tolist() == [gt.sum(), gt.sum(), gt.sum(), gt.sum()]


def noisy_prediction(rng, size=256):
    """What an untrained network gives: smooth-ish noise around 0.5, dense at every threshold."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0)
    return 1 / (1 + np.exp(-noise / noise.std()))


def segment_boundaries(rng, size=256, annotators=3):
    """Annotators outlining the same random segmentation, each shifted by up to a pixel."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 16)
    labels = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75]))
    out = []
    for _ in range(annotators):
        lab = np.roll(labels, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
        edge = np.zeros(lab.shape, dtype=bool)
        edge[:-1] |= lab[:-1] != lab[1:]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        out.append(edge)
    return out


def test_dense_noisy_prediction_against_an_independent_count():
    # a 256x256 noisy map with three annotators at 11 thresholds (the old matching took minutes
    # per threshold here); recall is checked against maximum matchings computed independently
    # (pairs from a KD-tree, scipy's Hopcroft-Karp: quick on this fixed input, though not on every
    # graph, see boundary._maximum_matching), the thinned sizes against scikit-image
    from skimage.morphology import thin

    rng = np.random.default_rng(7)
    prob = noisy_prediction(rng)
    gts = segment_boundaries(rng)
    levels = thresholds(11)
    max_dist = default_max_dist(256, 256)
    counts = image_counts(prob, gts, levels, max_dist)
    assert counts.shape == (11, 4)
    assert (counts[1:7, 1] > 8000).all()  # dense: thousands of thinned pixels in mid-range
    for level, (cnt_p, sum_p, cnt_r, sum_r) in zip(levels, counts):
        edges = thin(prob >= level)
        assert sum_p == edges.sum()
        assert sum_r == sum(int(g.sum()) for g in gts)
        pred_tree = cKDTree(np.argwhere(edges))
        sizes = []
        for gt in gts:
            pairs = pred_tree.sparse_distance_matrix(cKDTree(np.argwhere(gt)), max_dist,
                                                     output_type="ndarray")
            graph = csr_array((np.ones(len(pairs)), (pairs["i"], pairs["j"])),
                              shape=(int(edges.sum()), int(gt.sum())))
            sizes.append(int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum()))
        assert cnt_r == sum(sizes)
        assert max(sizes) <= cnt_p <= min(sum_p, sum(sizes))
    np.testing.assert_array_equal(
        counts, np.stack([match_edges(thin(prob >= t), gts, max_dist) for t in levels]))


@pytest.mark.parametrize("dense_fraction", [0.0, boundary._DENSE_FRACTION, np.inf])
def test_thinning_equals_skimage_in_either_mode(monkeypatch, dense_fraction):
    # 0: every pass over whole slices; inf: every pass over the listed pixels alone
    from skimage.morphology import thin

    monkeypatch.setattr(boundary, "_DENSE_FRACTION", dense_fraction)
    rng = np.random.default_rng(3)
    maps = [rng.random((48, 57)) < p for p in (0.2, 0.5, 0.8)]
    solid = np.zeros((48, 57), dtype=bool)
    solid[5:40, 8:50] = True
    solid[20:25, 20:30] = False  # a hole
    maps += [solid, solid | (rng.random((48, 57)) < 0.3), np.ones((48, 57), dtype=bool),
             np.zeros((48, 57), dtype=bool)]
    stack = np.stack(maps)
    np.testing.assert_array_equal(thin_stack(stack), np.stack([thin(m) for m in stack]))
