"""Decoupled Knowledge Distillation: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

Hinton's KD loss splits into a target-class part and a non-target-class part. With p = softmax(z / T)
for the teacher (t) and the student (s), and y the label:

    b = [p_y, 1 - p_y]                                   binary target / rest probabilities
    p_hat = softmax over the classes k != y of z_k / T    the non-target distribution

    TCKD = KL(b^t || b^s)
    NCKD = KL(p_hat^t || p_hat^s)
    L_DKD = T^2 * (alpha * TCKD + beta * NCKD), averaged over the batch

Classical KD weights NCKD by (1 - p_y^t), which suppresses it exactly when the teacher is confident;
DKD gives it its own weight beta. The paper's CIFAR-100 setting is alpha = 1, beta = 8, T = 4 (the
defaults here); it also ramps the loss up linearly over the first 20 epochs, which a recipe can
approximate with the scheduler's warm-up.

Soft targets (CutMix/Mixup class probabilities) use their most probable class as y.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import KDEngineError, LossContext, LossTerm, Params


def _kl(p_log_teacher: torch.Tensor, p_log_student: torch.Tensor) -> torch.Tensor:
    """sum_k p_t (log p_t - log p_s) per row, from log-probabilities."""
    return (p_log_teacher.exp() * (p_log_teacher - p_log_student)).sum(dim=1)


def _binary_log_probs(logits: torch.Tensor, target_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """log [p_y, 1 - p_y] of softmax(logits / T), computed stably with logsumexp."""
    scaled = logits / temperature
    log_all = torch.logsumexp(scaled, dim=1)
    log_target = torch.logsumexp(scaled.masked_fill(~target_mask, float("-inf")), dim=1) - log_all
    log_rest = torch.logsumexp(scaled.masked_fill(target_mask, float("-inf")), dim=1) - log_all
    return torch.stack([log_target, log_rest], dim=1)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """T^2 * (alpha * TCKD + beta * NCKD), averaged over the batch."""
    student, teacher = student_logits.float(), teacher_logits.float()
    mask = F.one_hot(labels, student.shape[1]).bool()
    tckd = _kl(_binary_log_probs(teacher, mask, temperature), _binary_log_probs(student, mask, temperature))
    # Non-target distribution: the target logit is removed (-inf) before the softmax.
    log_nt_teacher = F.log_softmax((teacher / temperature).masked_fill(mask, float("-inf")), dim=1)
    log_nt_student = F.log_softmax((student / temperature).masked_fill(mask, float("-inf")), dim=1)
    nt_teacher = log_nt_teacher.exp()
    nckd = (nt_teacher * (log_nt_teacher - log_nt_student)).masked_fill(mask, 0.0).sum(dim=1)
    return temperature**2 * (alpha * tckd + beta * nckd).mean()


class DecoupledKD(LossTerm):
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD at temperature T."""

    needs_teacher = True

    class Params(Params):
        alpha: float = Field(1.0, ge=0, description="weight of target-class KD (TCKD)")
        beta: float = Field(8.0, ge=0, description="weight of non-target-class KD (NCKD)")
        temperature: float = Field(4.0, gt=0)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        labels = ctx.targets
        if not isinstance(labels, torch.Tensor):
            raise KDEngineError("dkd.dkd needs class labels as the batch's targets")
        if labels.is_floating_point():
            labels = labels.argmax(dim=1)
        p = self.params
        return dkd_loss(ctx.student, ctx.teacher, labels.long(), p.alpha, p.beta, p.temperature)
