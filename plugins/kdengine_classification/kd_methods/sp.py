"""SP — Similarity-Preserving KD (Tung & Mori, ICCV 2019).

Samples that activate the teacher alike should activate the student alike. For a tapped feature
A of a batch of B samples (any shape: (B, C, H, W) maps, (B, N, C) tokens, (B, D) vectors),
flattened to Q (B x D), the batch's similarity matrix is row-normalised:

    G = Q Q^T   (B x B),        G~[i, :] = G[i, :] / ||G[i, :]||_2

and for each pair (l, l') of student and teacher layers

    L_SP = 1/B^2 * sum_{(l, l')} || G~_t^(l') - G~_s^(l) ||_F^2

The two features of a pair may have any sizes (the matrices are B x B). The paper's weight gamma
(3000 on CIFAR-10) is the recipe's weight of the term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import LossContext, LossTerm, Params

from kdengine_classification.kd_methods.rkd import raw_feature


def similarity(feature: torch.Tensor) -> torch.Tensor:
    """G~: the row-normalised (B, B) Gram matrix of a feature flattened per sample."""
    flat = feature.float().flatten(1)
    return F.normalize(flat @ flat.t(), p=2, dim=1, eps=1e-12)


def sp_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """|| G~_t - G~_s ||_F^2 / B^2 for one pair of features."""
    batch = student.shape[0]
    return (similarity(teacher.detach()) - similarity(student)).pow(2).sum() / (batch * batch)


class SimilarityPreserving(LossTerm):
    """SP (Tung & Mori, ICCV 2019): squared Frobenius distance between the student's and the teacher's
    row-normalised batch similarity matrices, summed over layer pairs."""

    needs_teacher = True
    #: The similarity matrices relate the samples of the batch.
    per_sample = False

    class Params(Params):
        pairs: list[tuple[str, str]] = Field(
            min_length=1, description="(student layer, teacher layer) module paths; the pairs' losses are summed")

    def student_taps(self) -> list[str]:
        return [s for s, _ in self.params.pairs]

    def teacher_taps(self) -> list[str]:
        return [t for _, t in self.params.pairs]

    def forward(self, ctx: LossContext) -> torch.Tensor:
        total = 0.0
        for student_layer, teacher_layer in self.params.pairs:
            student = raw_feature(ctx, "sp", "student", student_layer)
            teacher = raw_feature(ctx, "sp", "teacher", teacher_layer)
            total = total + sp_distance(student, teacher)
        return total
