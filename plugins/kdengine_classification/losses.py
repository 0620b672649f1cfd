"""Classification loss terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import LossContext, LossTerm, Params
from kdengine_classification.kd_methods.standardize import standardize as z_score


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              standardize: bool = False) -> torch.Tensor:
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015):

        T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch.

    The T^2 factor keeps the gradient scale of the soft term independent of T.

    ``standardize=True`` z-scores each sample's logits first (Sun et al., CVPR 2024, see
    :mod:`kdengine_classification.kd_methods.standardize`); T is then a base temperature on
    standardized logits. ``temperature`` may also be a tensor (a learned temperature).
    """
    if standardize:
        student_logits, teacher_logits = z_score(student_logits), z_score(teacher_logits)
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


class KLDivergence(LossTerm):
    """Hinton's soft-target loss: T^2 * KL(p_teacher^T || p_student^T)."""

    needs_teacher = True

    class Params(Params):
        temperature: float = Field(4.0, gt=0)
        standardize: bool = Field(False, description="z-score each sample's logits before the softmax "
                                  "(Sun et al., CVPR 2024; the authors use T = 2 with it)")

    def forward(self, ctx: LossContext) -> torch.Tensor:
        return hinton_kd(ctx.student, ctx.teacher, self.params.temperature, self.params.standardize)


class CrossEntropy(LossTerm):
    """Cross-entropy to the labels: class indices, or class probabilities after CutMix/Mixup."""

    class Params(Params):
        label_smoothing: float = Field(0.0, ge=0, lt=1)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        targets = ctx.targets
        if targets.is_floating_point():
            targets = targets.float()
        return F.cross_entropy(ctx.student.float(), targets, label_smoothing=self.params.label_smoothing)
