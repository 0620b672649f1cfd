"""NKD: Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach
with Normalized Loss and Customized Soft Labels", ICCV 2023.

KD is split at the label y into a target part and a non-target part, and the non-target
probabilities are normalized to sum to one (divided by 1 - p_y), so their scale no longer depends
on how confident the model is in the target class. With t = softmax(z_t), s = softmax(z_s) at T = 1
and N(p)_k = p_k / (1 - p_y) for k != y, taken at temperature T (``t^T``, ``s^T``):

    L_target = -t_y * log s_y
    L_non    = T^2 * KL(N(t^T) || N(s^T)) = T^2 * sum_{k != y} N(t^T)_k (log N(t^T)_k - log N(s^T)_k)
    L_NKD    = L_target + gamma * L_non, averaged over the batch

It is used together with the cross-entropy term. Defaults are the paper's (T = 1, gamma = 1.5).

Stated difference: the paper (and its code) writes the non-target part as a cross-entropy,
-sum_{k != y} N(t^T)_k log N(s^T)_k; the KL here is that minus the teacher's normalized
non-target entropy, a constant for the student, so the gradients are the same and the non-target
part is 0 when the student matches the teacher. The target part keeps the paper's form: at
teacher = student it is -t_y log t_y, not 0. Soft targets (CutMix/Mixup) use their most probable
class as y, as the authors' code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import LossContext, LossTerm, Params
from kdengine_classification.kd_methods.dkd import class_labels, target_and_rest


def nkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch means of L_target and of the (un-weighted, un-scaled) normalized non-target KL."""
    student, teacher = student_logits.float(), teacher_logits.float()
    log_s = F.log_softmax(student, dim=1)
    t = F.softmax(teacher, dim=1)
    s_y = log_s.gather(1, labels[:, None]).squeeze(1)
    t_y = t.gather(1, labels[:, None]).squeeze(1)
    target = -(t_y * s_y).mean()
    # softmax over the non-target logits == the non-target probabilities divided by 1 - p_y
    _, rest_s = target_and_rest(student / temperature, labels)
    _, rest_t = target_and_rest(teacher / temperature, labels)
    log_n_s = F.log_softmax(rest_s, dim=1)
    log_n_t = F.log_softmax(rest_t, dim=1)
    non_target = (log_n_t.exp() * (log_n_t - log_n_s)).sum(dim=1).mean()
    return target, non_target


def nkd_loss(student_logits, teacher_logits, labels, temperature: float, gamma: float) -> torch.Tensor:
    target, non_target = nkd_parts(student_logits, teacher_logits, labels, temperature)
    return target + gamma * temperature**2 * non_target


class NormalizedKD(LossTerm):
    """NKD (Yang et al., ICCV 2023): teacher-weighted target loss plus KL of the normalized non-target probabilities."""

    needs_teacher = True
    needs_labels = True  # its target term reads the label

    class Params(Params):
        temperature: float = Field(1.0, gt=0, description="temperature of the non-target part")
        gamma: float = Field(1.5, ge=0, description="weight of the normalized non-target part")

    def forward(self, ctx: LossContext) -> torch.Tensor:
        p = self.params
        labels = class_labels(ctx.targets, "nkd")
        return nkd_loss(ctx.student, ctx.teacher.detach(), labels, p.temperature, p.gamma)
