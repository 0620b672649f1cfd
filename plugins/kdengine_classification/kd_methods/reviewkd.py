"""ReviewKD: Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review".

Each teacher stage i (shallow to deep, i = 1..n) is taught by the student's stage i *and* every
deeper one: the student's features are fused from deep to shallow by attention-based fusion (ABF)
and each fused map is compared with the teacher's stage by the hierarchical context loss (HCL).

ABF of stage i, on the student's feature s_i and the fused residual r_{i+1} of the deeper stage:

    x_i   = BN(conv1x1(s_i))                                 C_s,i -> mid channels
    a     = sigmoid(conv1x1([x_i, up(r_{i+1})]))             2 spatial attention maps (a_1, a_2)
    r_i   = a_1 * x_i + a_2 * up(r_{i+1})                    (r_n = x_n at the deepest stage, no fusion)
    y_i   = BN(conv3x3(r_i))                                 mid -> C_t,i

with up() nearest-neighbour upsampling to x_i's grid. HCL between y (the student's) and t (the
teacher's) of one stage, with w_0 = 1 for the full map and w_k = 2^-k for the k-th pooled level
that is smaller than the map (levels ``[4, 2, 1]`` by default, a level >= min(H, W) is skipped):

    HCL(y, t) = ( w_0 * MSE(y, t) + sum_k w_k * MSE(pool_{l_k}(y), pool_{l_k}(t)) ) / (w_0 + sum_k w_k)
    L_ReviewKD = sum_i HCL(y_i, t_i)

pool_l is adaptive average pooling to l x l, MSE the mean of squared differences. On a map of 8x8
or more the weights are 1, 0.5, 0.25, 0.125 for full size and levels 4, 2, 1, divided by their sum
1.875, as in the authors' code; smaller maps keep the leading weights of the levels they use.
The ABF modules are created in ``setup`` from the real shapes, trained with the student and
dropped at export; when a fused map's grid differs from its teacher stage's, it is brought to it
(pooled when larger, interpolated when smaller). ``mid_channels`` is the fusion width (the authors
use 256 on ImageNet, fewer on CIFAR-sized networks). Kept small on purpose: no ReviewKD-specific
teacher or student surgery; the paper's stage loss weight and warm-up belong to the recipe.

The minimum is 0, where every fused map equals its teacher stage (for instance, identity 1x1 and
3x3 convolutions, identity BatchNorms, attention that keeps x_i alone, and teacher = student).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from kdengine import KDEngineError, LossContext, LossTerm, Params

from kdengine_classification.kd_methods._common import resize_to
from kdengine_classification.kd_methods.vid import named_map


class AttentionFusion(nn.Module):
    """One stage of ABF: reduce to ``mid`` channels, fuse with the deeper residual (if ``fuse``), expand."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.attention = nn.Conv2d(2 * mid_channels, 2, 1) if fuse else None
        self.expand = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))

    def forward(self, feature: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(y_i, r_i): the stage's output for HCL and the residual passed to the shallower stage."""
        x = self.reduce(feature)
        if self.attention is not None:
            if residual is None:
                raise KDEngineError("reviewkd: a fusing stage needs the deeper stage's residual")
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            weights = torch.sigmoid(self.attention(torch.cat([x, residual], dim=1)))
            x = x * weights[:, 0:1] + residual * weights[:, 1:2]
        return self.expand(x), x


def hierarchical_context(student: torch.Tensor, teacher: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """HCL between two (B, C, H, W) maps of one grid (see the module docstring)."""
    loss = F.mse_loss(student, teacher)
    weight, total = 1.0, 1.0
    for level in levels:
        if level >= min(student.shape[-2:]):
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, level), F.adaptive_avg_pool2d(teacher, level))
        total += weight
    return loss / total


def _listed(role: str, layers: list[str], maps: list[torch.Tensor]) -> str:
    return ", ".join(f"{role} '{path}' {tuple(m.shape)}" for path, m in zip(layers, maps))


class ReviewKD(LossTerm):
    """ReviewKD (Chen et al., CVPR 2021): attention-fused student stages, deep to shallow, matched to teacher stages by hierarchical context loss."""

    needs_teacher = True
    #: The fusion modules' BatchNorms normalise with the batch's statistics.
    per_sample = False

    class Params(Params):
        student_layers: list[str] = Field(min_length=1, description="student stages, shallow to deep")
        teacher_layers: list[str] = Field(min_length=1, description="the matching teacher stages, shallow to deep")
        mid_channels: int = Field(64, ge=1, description="channels of the attention-based fusion")
        levels: list[PositiveInt] = Field([4, 2, 1], description="pooled sizes of the hierarchical context loss")

    def __init__(self, params=None):
        super().__init__(params)
        self.fusions: nn.ModuleList | None = None

    def student_taps(self) -> list[str]:
        return list(self.params.student_layers)

    def teacher_taps(self) -> list[str]:
        return list(self.params.teacher_layers)

    def _maps(self, ctx: LossContext) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        students = [named_map(ctx, "student", p, "reviewkd") for p in self.params.student_layers]
        teachers = [named_map(ctx, "teacher", p, "reviewkd").detach() for p in self.params.teacher_layers]
        return students, teachers

    def setup(self, ctx: LossContext) -> None:
        students, teachers = self._maps(ctx)
        s_layers, t_layers = self.params.student_layers, self.params.teacher_layers
        if len(students) != len(teachers):
            raise KDEngineError(
                f"reviewkd: {len(students)} student stage(s) but {len(teachers)} teacher stage(s); each student "
                f"stage is fused into one teacher stage, so student_layers and teacher_layers must pair up: "
                f"{_listed('student', s_layers, students)}; {_listed('teacher', t_layers, teachers)}"
            )
        deepest = len(students) - 1
        device = students[0].device
        self.fusions = nn.ModuleList(
            AttentionFusion(s.shape[1], self.params.mid_channels, t.shape[1], fuse=i != deepest).to(device)
            for i, (s, t) in enumerate(zip(students, teachers))
        )

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if self.fusions is None:
            raise KDEngineError("reviewkd: setup(ctx) must run before the first forward (it creates the fusion modules)")
        students, teachers = self._maps(ctx)
        weight = next(self.fusions.parameters())
        total, residual = 0.0, None
        for fusion, student, teacher in reversed(list(zip(self.fusions, students, teachers))):
            output, residual = fusion(student.to(weight.dtype), residual)
            output = resize_to(output.float(), tuple(teacher.shape[-2:]))
            total = total + hierarchical_context(output, teacher, self.params.levels)
        return total
