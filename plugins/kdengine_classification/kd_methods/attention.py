"""Attention transfer: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.

For a feature map F (B, C, H, W) the activation-based spatial attention map is

    A(F) = sum_c |F_c|^p                     (p = 2 in the paper)

flattened to a vector over the H*W positions and L2-normalised, q = A(F) / ||A(F)||_2. For each
pair j of (student layer, teacher layer):

    L_AT = beta * sum_j mean_{b, i} (q_s^j[b, i] - q_t^j[b, i])^2

This is the paper's ``beta/2 * sum_j || q_s - q_t ||_2`` in the form of the authors' code,
which squares the difference and averages over batch and positions; the default beta = 1000 is
theirs. Channels may differ (attention maps have none). When the grids differ the larger
attention map is average-pooled to the smaller one before normalising.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import LossContext, LossTerm, Params

from kdengine_classification.kd_methods._common import tapped


def attention_map(feature: torch.Tensor, p: float) -> torch.Tensor:
    """sum_c |F_c|^p of a (B, C, H, W) map, shape (B, H, W)."""
    return feature.abs().pow(p).sum(dim=1)


def normalised(attention: torch.Tensor) -> torch.Tensor:
    return F.normalize(attention.flatten(1), p=2, dim=1, eps=1e-12)


def at_distance(student: torch.Tensor, teacher: torch.Tensor, p: float) -> torch.Tensor:
    """mean_{b,i} (q_s - q_t)^2 between two (B, C, H, W) maps (grids matched by pooling)."""
    a_s, a_t = attention_map(student, p), attention_map(teacher, p)
    size = (min(a_s.shape[-2], a_t.shape[-2]), min(a_s.shape[-1], a_t.shape[-1]))
    a_s = F.adaptive_avg_pool2d(a_s[:, None], size)[:, 0]
    a_t = F.adaptive_avg_pool2d(a_t[:, None], size)[:, 0]
    return (normalised(a_s) - normalised(a_t)).pow(2).mean()


class AttentionTransfer(LossTerm):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): L2 between normalised spatial attention maps."""

    needs_teacher = True

    class Params(Params):
        #: (student layer, teacher layer) module paths, one pair per matched stage.
        pairs: list[tuple[str, str]] = Field(min_length=1)
        p: float = Field(2.0, gt=0)
        beta: float = Field(1000.0, gt=0)

    def student_taps(self) -> list[str]:
        return [s for s, _ in self.params.pairs]

    def teacher_taps(self) -> list[str]:
        return [t for _, t in self.params.pairs]

    def forward(self, ctx: LossContext) -> torch.Tensor:
        total = 0.0
        for student_layer, teacher_layer in self.params.pairs:
            student = tapped(ctx, "student", student_layer)
            teacher = tapped(ctx, "teacher", teacher_layer)
            total = total + at_distance(student, teacher, self.params.p)
        return self.params.beta * total
