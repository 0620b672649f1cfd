"""Opt-in: our ODS/OIS against pyEdgeEval (the maintained Python port of the BSDS benchmark) on
real BSDS500 test ground truth, with the published protocol: edge NMS, thinning, a tolerance of
0.0075 x the diagonal, every annotator.

Skips without ``$KDENGINE_DATA_ROOT/BSDS500`` or ``../shared/data/BSDS500``, or without
pyEdgeEval. pyEdgeEval's matcher costs about a second per threshold and annotator on a whole
481x321 image, so the test scores the centres of a few images (their real annotations, cropped)
with the full image's tolerance in pixels, at a coarse threshold grid on both sides.
``benchmarks/edges_bsds_eval.py --pyedgeeval`` compares whole images at 99 thresholds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import shared_data_root
from scipy import ndimage

from kdengine_edges.metrics import BoundaryF

pytestmark = pytest.mark.integration

IMAGES = 6
CROP = (96, 144)
THRESHOLDS = 9
#: 0.0075 x the diagonal of a whole BSDS image (481 x 321), as a fraction of the crop's diagonal
TOLERANCE = 0.0075 * math.hypot(481, 321) / math.hypot(*CROP)


def centre_crops(root):
    from kdengine_edges.readers import read_bsds_boundaries

    files = sorted((root / "groundTruth" / "test").glob("*.mat"))[:IMAGES]
    crops = []
    for path in files:
        annotators = read_bsds_boundaries(path)
        height, width = annotators.shape[1:]
        if height > width:  # portrait: the crop's long side along the image's
            annotators = annotators.transpose(0, 2, 1)
            height, width = width, height
        top, left = (height - CROP[0]) // 2, (width - CROP[1]) // 2
        crops.append(annotators[:, top:top + CROP[0], left:left + CROP[1]])
    return crops


def predictions(kind, annotators, rng):
    """Probability maps of three kinds: sharp, thick (blurred) and noisy."""
    if kind == "sharp":  # one annotator's boundaries
        prob = annotators[0].astype(float)
    elif kind == "thick":  # every annotator's mean, blurred over several pixels
        prob = ndimage.gaussian_filter(annotators.mean(axis=0), 2.0)
        prob /= max(prob.max(), 1e-6)
    else:  # one annotator with smooth noise everywhere
        noise = ndimage.gaussian_filter(rng.random(annotators.shape[1:]), 1.0)
        prob = 0.7 * annotators[0] + 0.3 * noise
    # through logits as a network gives them; pyEdgeEval then sees the very same probabilities
    logits = torch.logit(torch.from_numpy(np.clip(prob, 1e-4, 1 - 1e-4)).float())
    return logits, torch.sigmoid(logits).double().numpy()


@pytest.fixture(scope="module")
def bsds_crops():
    data = shared_data_root()
    root = data / "BSDS500" if data else None
    if root is None or not (root / "groundTruth" / "test").is_dir():
        pytest.skip("BSDS500 not found (set KDENGINE_DATA_ROOT or provide ../shared/data)")
    return centre_crops(root)


@pytest.mark.parametrize("kind", ["sharp", "thick", "noisy"])
def test_ods_ois_agree_with_pyedgeeval(bsds_crops, kind):
    pytest.importorskip("cv2")  # pyEdgeEval.preprocess imports it without declaring it
    evaluate = pytest.importorskip("pyEdgeEval.common.binary_label.evaluate_boundaries")
    from pyEdgeEval.common.binary_label import calculate_metrics
    from pyEdgeEval.common.utils import check_thresholds

    rng = np.random.default_rng(0)
    metric = BoundaryF(THRESHOLDS, TOLERANCE, nms=True)
    samples = []
    for index, annotators in enumerate(bsds_crops):
        logits, prob = predictions(kind, annotators, rng)
        stack = torch.from_numpy(annotators)[None].float()
        metric.update(logits[None, None], {"mask": torch.zeros(1, 1, *CROP), "annotators": stack})
        samples.append({"name": str(index), "prob": prob, "gts": list(annotators.astype(np.uint8))})

    def counts(sample):
        return evaluate.evaluate_boundaries_threshold_multiple_gts(
            check_thresholds(THRESHOLDS), sample["prob"], sample["gts"], max_dist=TOLERANCE,
            apply_thinning=True, apply_nms=True)

    _, _, reference = calculate_metrics(counts, THRESHOLDS, samples, nproc=1)
    ours = metric.compute()
    assert float(ours["ods"]) == pytest.approx(reference["ODS_f1"], abs=0.005)
    assert float(ours["ois"]) == pytest.approx(reference["OIS_f1"], abs=0.005)
