"""DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

Hinton's KD loss splits into a target-class part and a non-target-class part. With
p = softmax(z / T) for the teacher (t) and the student (s), and y the label of each sample:

    b = [p_y, 1 - p_y]                                    target vs. all other classes
    p_hat_k = exp(z_k / T) / sum_{j != y} exp(z_j / T)     k != y: the non-target distribution

    TCKD = KL(b^t || b^s)
    NCKD = KL(p_hat^t || p_hat^s)
    L_DKD = T^2 * (alpha * TCKD + beta * NCKD), averaged over the batch

Classical KD equals TCKD + (1 - p_y^t) * NCKD, which suppresses NCKD exactly when the teacher is
confident; DKD gives it its own weight beta. Defaults are the paper's CIFAR-100 setting
(alpha = 1, beta = 8, T = 4); for ImageNet it uses alpha = 0.5, beta = 0.5, T = 1.

Stated differences from the paper's recipe: the authors ramp the DKD loss up linearly over the first
20 epochs; this term has no warm-up of its own (a recipe's loss weight has no schedule either), so
it is the plain loss from the first step. Soft targets (CutMix/Mixup class probabilities) use their
most probable class as y.

``standardize = true`` z-scores each sample's logits first (Sun et al., CVPR 2024, "Logit
Standardization in Knowledge Distillation", see :mod:`.standardize`); T is then a base
temperature on the standardized logits, and the authors use T = 2 with a larger KD weight (9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import KDEngineError, LossContext, LossTerm, Params
from kdengine_classification.kd_methods.standardize import maybe_standardize


def class_labels(targets, method: str) -> torch.Tensor:
    """Class indices (B,) from the batch's targets: indices as they are, soft targets by argmax."""
    if not isinstance(targets, torch.Tensor):
        raise KDEngineError(f"{method} needs class labels as the batch's targets, got {type(targets).__name__}")
    if targets.is_floating_point():
        return targets.argmax(dim=1)
    return targets.long().view(-1)


def target_and_rest(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target logit (B,) and the other K - 1 logits (B, K - 1) of each row, in class order."""
    mask = F.one_hot(labels, logits.shape[1]).bool()
    return logits[mask], logits[~mask].view(logits.shape[0], -1)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_k p_k (log p_k - log q_k) of each row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _binary_and_non_target(logits: torch.Tensor, labels: torch.Tensor, temperature: float):
    """log [p_y, 1 - p_y] (B, 2) and log p_hat (B, K - 1) of softmax(logits / T), via logsumexp."""
    target, rest = target_and_rest(logits / temperature, labels)
    log_all = torch.logsumexp(torch.cat([target[:, None], rest], dim=1), dim=1)
    log_rest = torch.logsumexp(rest, dim=1)
    binary = torch.stack([target - log_all, log_rest - log_all], dim=1)
    return binary, rest - log_rest[:, None]


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             alpha: float, beta: float, temperature: float, standardize: bool = False) -> torch.Tensor:
    """T^2 * (alpha * TCKD + beta * NCKD), averaged over the batch."""
    student, teacher = maybe_standardize(student_logits, teacher_logits, standardize)
    b_s, nt_s = _binary_and_non_target(student, labels, temperature)
    b_t, nt_t = _binary_and_non_target(teacher, labels, temperature)
    tckd = _kl_rows(b_t, b_s)
    nckd = _kl_rows(nt_t, nt_s)
    return temperature**2 * (alpha * tckd + beta * nckd).mean()


class DecoupledKD(LossTerm):
    """DKD (Zhao et al., CVPR 2022): target-class and non-target-class KD, weighted apart (alpha * TCKD + beta * NCKD)."""

    needs_teacher = True
    needs_labels = True  # its target-class part reads the label

    class Params(Params):
        alpha: float = Field(1.0, ge=0, description="weight of target-class KD (TCKD)")
        beta: float = Field(8.0, ge=0, description="weight of non-target-class KD (NCKD)")
        temperature: float = Field(4.0, gt=0)
        standardize: bool = Field(False, description="z-score each sample's logits first (Sun et al., CVPR 2024)")

    def forward(self, ctx: LossContext) -> torch.Tensor:
        p = self.params
        labels = class_labels(ctx.targets, "dkd")
        return dkd_loss(ctx.student, ctx.teacher.detach(), labels, p.alpha, p.beta, p.temperature, p.standardize)
