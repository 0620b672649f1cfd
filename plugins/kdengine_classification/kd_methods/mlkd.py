"""MLKD: Jin et al., "Multi-Level Logit Distillation", CVPR 2023.

The teacher's predictions are aligned with the student's at three levels, each at several
temperatures (the paper's "prediction augmentation"). With P = softmax(Z / T), (B, K), for the
teacher (t) and the student (s):

    instance level: L_ins(T)   = T^2 * 1/B * sum_i KL(P^t[i] || P^s[i])
    batch level:    G = P P^T   (B x B: how alike two samples' predictions are)
                    L_batch(T) = 1/B * sum_ij (G^t_ij - G^s_ij)^2
    class level:    M = P^T P   (K x K: how often two classes are predicted together)
                    L_class(T) = 1/K * sum_kl (M^t_kl - M^s_kl)^2

    L_MLKD = sum_{T in temperatures} (w_ins * L_ins(T) + w_batch * L_batch(T) + w_class * L_class(T))

Defaults follow the paper: temperatures 2, 3, 4, 5, 6, all three levels weighted 1 (the T^2
factor only on the instance level, as in the authors' code).

Stated variant: the paper runs teacher and student on a weakly and a strongly augmented view of
each image and masks the weak view's terms by the teacher's confidence (samples and classes below
the batch's median confidence). This term takes the logits of the single view the engine gives it
(the dataset's augmentation, CutMix/Mixup included), with no confidence masking: it is the paper's
loss on one view. The batch and class levels compare the samples of a batch with each other, so the
term is not a per-sample mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from kdengine import LossContext, LossTerm, Params


def mlkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """L_ins, L_batch and L_class at one temperature."""
    student, teacher = student_logits.float() / temperature, teacher_logits.float() / temperature
    log_s, log_t = F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1)
    p_s, p_t = log_s.exp(), log_t.exp()
    batch, classes = p_s.shape
    instance = temperature**2 * (p_t * (log_t - log_s)).sum(dim=1).mean()
    batch_level = (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / batch
    class_level = (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / classes
    return instance, batch_level, class_level


def mlkd_loss(student_logits, teacher_logits, temperatures, instance_weight: float = 1.0,
              batch_weight: float = 1.0, class_weight: float = 1.0) -> torch.Tensor:
    total = student_logits.new_zeros((), dtype=torch.float32)
    for t in temperatures:
        instance, batch_level, class_level = mlkd_parts(student_logits, teacher_logits, t)
        total = total + instance_weight * instance + batch_weight * batch_level + class_weight * class_level
    return total


class MultiLevelKD(LossTerm):
    """MLKD (Jin et al., CVPR 2023): instance-, batch- and class-level alignment of predictions at several temperatures."""

    needs_teacher = True
    #: The batch- and class-level Gram matrices couple the samples of a batch.
    per_sample = False

    class Params(Params):
        temperatures: tuple[float, ...] = Field((2.0, 3.0, 4.0, 5.0, 6.0), min_length=1,
                                                description="the temperatures every level is taken at")
        instance_weight: float = Field(1.0, ge=0, description="weight of the instance-level KL")
        batch_weight: float = Field(1.0, ge=0, description="weight of the batch-level (B x B) alignment")
        class_weight: float = Field(1.0, ge=0, description="weight of the class-level (K x K) alignment")

        @field_validator("temperatures")
        @classmethod
        def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
            if any(t <= 0 for t in value):
                raise ValueError("every temperature must be > 0")
            return value

    def forward(self, ctx: LossContext) -> torch.Tensor:
        p = self.params
        return mlkd_loss(ctx.student, ctx.teacher.detach(), p.temperatures, p.instance_weight,
                         p.batch_weight, p.class_weight)
