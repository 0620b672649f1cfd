"""FitNets hints: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

The student's guided layer, passed through a learned regressor r, is pulled towards the teacher's
hint layer:

    L_hint = 1/N * || r(F_s) - F_t ||_2^2

with N the number of elements of F_t (a mean squared error; the paper's 1/2 factor is folded
into the recipe's weight). r is a 1x1 convolution from the student's to the teacher's channels
(kdengine.make_adapter), created in ``setup`` from a real batch, trained with the
student and dropped at export. When the grids differ, r(F_s) is average-pooled (larger student
grid) or bilinearly interpolated (smaller one) to the teacher's grid. Token features (B, N, C)
of transformers are reshaped to square maps.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from kdengine import KDEngineError, LossContext, LossTerm, Params
from kdengine import make_adapter

from kdengine_classification.kd_methods._common import resize_to, tapped


class FitNets(LossTerm):
    """FitNets hint loss (Romero et al., ICLR 2015): MSE between an adapted student feature and a teacher feature."""

    needs_teacher = True

    class Params(Params):
        student_layer: str = Field(min_length=1, description="module path of the guided student layer")
        teacher_layer: str = Field(min_length=1, description="module path of the teacher's hint layer")

    def __init__(self, params=None):
        super().__init__(params)
        self.adapter: nn.Module | None = None

    def student_taps(self) -> list[str]:
        return [self.params.student_layer]

    def teacher_taps(self) -> list[str]:
        return [self.params.teacher_layer]

    def setup(self, ctx: LossContext) -> None:
        student = tapped(ctx, "student", self.params.student_layer)
        teacher = tapped(ctx, "teacher", self.params.teacher_layer)
        self.adapter = make_adapter(student.shape[1], teacher.shape[1]).to(student.device)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if self.adapter is None:
            raise KDEngineError("fitnets: setup(ctx) must run before the first forward (it creates the adapter)")
        student = tapped(ctx, "student", self.params.student_layer)
        teacher = tapped(ctx, "teacher", self.params.teacher_layer)
        weight = next(self.adapter.parameters(), None)
        if weight is not None:
            student = student.to(weight.dtype)
        hint = resize_to(self.adapter(student).float(), tuple(teacher.shape[-2:]))
        return torch.mean((hint - teacher) ** 2)
