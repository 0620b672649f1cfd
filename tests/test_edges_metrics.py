import numpy as np
import pytest
import torch

from kdengine import DataInfo
from kdengine_edges.boundary import (default_max_dist, f_measure, image_counts, match_edges,
                                     ods_ois, thresholds)
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


def test_ods_ois_metric_end_to_end():
    gt = lines()
    metric = OdsOis({"thresholds": 9}).build(INFO)
    targets = {"mask": torch.from_numpy(gt).float()[None, None],
               "annotators": torch.from_numpy(np.stack([gt, gt])).float()[None]}
    metric.update(logits_from(gt), targets)
    result = metric.compute()
    assert set(result) == {"ods", "ois"}
    assert float(result["ods"]) == pytest.approx(1.0)
    metric.reset()
    metric.update(logits_from(np.zeros_like(gt)), targets)
    assert float(metric.compute()["ods"]) == 0.0


def test_ods_ois_ignores_padding_and_missing_annotators():
    gt = lines(60, 60)
    annotators = torch.full((1, 3, 80, 90), -1.0)
    annotators[0, 0, :60, :60] = torch.from_numpy(gt).float()
    annotators[0, 1, :60, :60] = torch.from_numpy(gt).float()
    pred = np.zeros((80, 90), dtype=bool)
    pred[:60, :60] = gt
    pred[70, :] = True  # in the padding: must not count
    metric = OdsOis({"thresholds": 5}).build(INFO)
    metric.update(logits_from(pred), {"mask": annotators[:, :1], "annotators": annotators})
    assert float(metric.compute()["ods"]) == pytest.approx(1.0)


def test_ods_ois_accepts_plain_targets():
    gt = lines()
    metric = OdsOis({"thresholds": 5}).build(INFO)
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
    with pytest.raises(Exception):
        OdsOis({"thresholds": 0})
    with pytest.raises(Exception):
        Dice({"threshold": 1.5})


def test_thinning_equals_skimage():
    from scipy import ndimage
    from skimage.morphology import thin

    from kdengine_edges.boundary import thin_stack

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
