"""Edge metrics: Dice at 0.5 and the BSDS ODS/OIS F-measure, as torchmetrics metrics.

Both take the model's logits ``(B, 1, H, W)`` and either a target tensor ``(B, 1, H, W)`` or the
evaluation dict ``{"mask", "annotators"}`` of :mod:`kdengine_edges.transforms`, or lists of
per-image logits and targets (images of different sizes); negative target values are padding and
are ignored.
"""

from __future__ import annotations

import numpy as np
import torch
import torchmetrics
from pydantic import Field
from torchmetrics.functional.classification import binary_stat_scores

from kdengine import DataInfo, Metric, Params

from kdengine_edges.boundary import default_max_dist, image_counts, ods_ois, thresholds
from kdengine_edges.nms import edge_nms
from kdengine_edges.transforms import per_image_batches, split_targets


class DiceScore(torchmetrics.Metric):
    """Dice = 2TP / (2TP + FP + FN) over all evaluated pixels (micro-averaged)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, target_threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold
        self.target_threshold = target_threshold
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def update(self, logits, targets) -> None:
        for batch_logits, batch_targets in per_image_batches(logits, targets):
            self._update(batch_logits, batch_targets)

    def _update(self, logits: torch.Tensor, targets) -> None:
        mask, _ = split_targets(targets)
        probs = torch.sigmoid(logits.detach().float())
        target = torch.where(mask < 0, -1, (mask >= self.target_threshold).long())
        tp, fp, _tn, fn, _support = binary_stat_scores(
            probs, target, threshold=self.threshold, ignore_index=-1
        )
        self.tp += tp.double()
        self.fp += fp.double()
        self.fn += fn.double()

    def compute(self) -> torch.Tensor:
        denom = 2 * self.tp + self.fp + self.fn
        return torch.where(denom > 0, 2 * self.tp / denom.clamp(min=1e-12),
                           torch.zeros_like(denom)).float()


class Dice(Metric):
    """Dice of the edge map thresholded at 0.5 (sigmoid) against the binarised ground truth."""

    summary = "Dice (F1) of sigmoid > threshold against the ground-truth mask"

    class Params(Params):
        threshold: float = Field(0.5, gt=0.0, lt=1.0, description="on the sigmoid output")
        target_threshold: float = Field(
            0.5, gt=0.0, le=1.0, description="soft targets at or above this count as edges"
        )

    def build(self, info: DataInfo) -> torchmetrics.Metric:
        return DiceScore(self.params.threshold, self.params.target_threshold)


class BoundaryF(torchmetrics.Metric):
    """ODS and OIS F-measure with the BSDS protocol (see :mod:`kdengine_edges.boundary`).

    With ``nms`` (the default, as in the published BSDS500 numbers of SE, HED and later
    detectors) each probability map goes through edge non-maximum suppression
    (:func:`kdengine_edges.nms.edge_nms`) before thresholding and thinning; without it the raw
    probabilities are thresholded, which scores thick edge maps far lower.

    The state is the per-image ``(T, 4)`` match counts, a list concatenated across processes, so
    both ODS and OIS can be computed after a distributed evaluation.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_thresholds: int = 99, tolerance: float = 0.0075, nms: bool = True):
        super().__init__()
        self.levels = thresholds(n_thresholds)
        self.tolerance = tolerance
        self.nms = nms
        self.add_state("counts", default=[], dist_reduce_fx="cat")

    def update(self, logits, targets) -> None:
        for batch_logits, batch_targets in per_image_batches(logits, targets):
            self._update(batch_logits, batch_targets)

    def _update(self, logits: torch.Tensor, targets) -> None:
        _, annotators = split_targets(targets)
        probs = torch.sigmoid(logits.detach().float()).cpu().numpy()[:, 0]
        annotators = annotators.detach().cpu().numpy()
        for prob, stack in zip(probs, annotators):
            valid = stack[0] >= 0
            rows = np.flatnonzero(valid.any(axis=1))
            cols = np.flatnonzero(valid.any(axis=0))
            height = int(rows[-1]) + 1 if len(rows) else 0
            width = int(cols[-1]) + 1 if len(cols) else 0
            gts = [a[:height, :width] >= 0.5 for a in stack if (a >= 0).any()]
            # suppression on the image alone: its border fade belongs at the image's own border
            prob = prob[:height, :width]
            if self.nms:
                prob = edge_nms(prob)
            counts = image_counts(
                prob, gts, self.levels,
                default_max_dist(height, width, self.tolerance),
            )
            self.counts.append(torch.from_numpy(counts).to(self.device)[None])

    def compute(self) -> dict[str, torch.Tensor]:
        counts = self.counts
        if isinstance(counts, list):
            counts = torch.cat(counts) if counts else torch.zeros(0, len(self.levels), 4)
        ods, ois = ods_ois(counts.double().cpu().numpy())
        return {"ods": torch.tensor(ods), "ois": torch.tensor(ois)}


class OdsOis(Metric):
    """ODS / OIS boundary F-measure of the BSDS benchmark (edge NMS, thinning, tolerance, all
    annotators)."""

    summary = ("BSDS boundary F-measure: ODS and OIS (edge NMS, thinned, 0.0075 x diagonal, "
               "all annotators)")
    #: The two values compute() returns: each is a column, and either can be train.monitor.
    keys = ("ods", "ois")

    class Params(Params):
        thresholds: int = Field(99, ge=1, le=999, description="evenly spaced in (0, 1)")
        tolerance: float = Field(0.0075, gt=0.0, lt=1.0,
                                 description="max match distance, as a fraction of the diagonal")
        nms: bool = Field(True, description="edge non-maximum suppression before thresholding, "
                                            "as published BSDS500 results use (false: raw map)")

    def build(self, info: DataInfo) -> torchmetrics.Metric:
        return BoundaryF(self.params.thresholds, self.params.tolerance, self.params.nms)
