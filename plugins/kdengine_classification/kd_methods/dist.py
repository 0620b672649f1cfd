"""DIST: Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

Instead of matching probabilities exactly (KL), DIST matches their relations with the Pearson
correlation rho(u, v) = cov(u, v) / (std(u) std(v)). With Y_s = softmax(z_s / T) and
Y_t = softmax(z_t / T), both (B, K):

    inter-class: L_inter = 1 - 1/B * sum_i rho(Y_s[i, :], Y_t[i, :])   (each sample's class ranking)
    intra-class: L_intra = 1 - 1/K * sum_k rho(Y_s[:, k], Y_t[:, k])   (each class across the batch)

    L_DIST = T^2 * (beta * L_inter + gamma * L_intra)

Defaults follow the paper's ImageNet setting (beta = gamma = 1, T = 1); its CIFAR-100 setting is
beta = gamma = 2, T = 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import LossContext, LossTerm, Params


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits, teacher_logits, beta: float, gamma: float, temperature: float) -> torch.Tensor:
    y_s = F.softmax(student_logits.float() / temperature, dim=1)
    y_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)


class DIST(LossTerm):
    """DIST (Huang et al., NeurIPS 2022): inter- and intra-class Pearson correlation between teacher and student probabilities."""

    needs_teacher = True
    #: The intra-class relation correlates each class across the batch.
    per_sample = False

    class Params(Params):
        beta: float = Field(1.0, ge=0, description="weight of the inter-class relation")
        gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation")
        temperature: float = Field(1.0, gt=0)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        p = self.params
        return dist_loss(ctx.student, ctx.teacher, p.beta, p.gamma, p.temperature)
