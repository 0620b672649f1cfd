"""NST — Neuron Selectivity Transfer (Huang & Wang, arXiv 2017).

"Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" treats each channel's
spatial activation map as a sample of a distribution and matches the student's distribution to
the teacher's by the maximum mean discrepancy. For one sample, with F (C x HW) a feature map and
f^k its k-th channel, L2-normalised over the positions (f^k <- f^k / ||f^k||_2):

    MMD^2(F_t, F_s) = 1/C_t^2 sum_{i, i'} k(f_t^i, f_t^i') + 1/C_s^2 sum_{j, j'} k(f_s^j, f_s^j')
                      - 2/(C_t C_s) sum_{i, j} k(f_t^i, f_s^j)

with the polynomial kernel k(x, y) = (x^T y + c)^d, d = 2, c = 0 (the paper's choice), and

    L_NST = mean over the batch of MMD^2(F_t, F_s)

The channel counts may differ (the channels are the samples of each distribution); the spatial
grids must agree, so the student's map is brought to the teacher's grid first (average-pooled
when larger, bilinearly interpolated when smaller), before normalising. Token features (B, N, C)
are reshaped to square maps. The paper's lambda / 2 factor is the recipe's weight of the term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import LossContext, LossTerm, Params

from kdengine_classification.kd_methods._common import resize_to, tapped


def channel_distributions(feature: torch.Tensor) -> torch.Tensor:
    """(B, C, H*W): each channel's spatial map, L2-normalised."""
    return F.normalize(feature.float().flatten(2), p=2, dim=2, eps=1e-12)


def polynomial_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean of (a_i^T b_j)^2 over the channels i of ``a`` and j of ``b``, shape (B,)."""
    return (a @ b.transpose(1, 2)).pow(2).mean(dim=(1, 2))


def nst_mmd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Batch mean of MMD^2 between two (B, C, H, W) maps on the same grid (polynomial kernel, d=2, c=0)."""
    f_s = channel_distributions(student)
    f_t = channel_distributions(teacher.detach())
    mmd = polynomial_kernel_mean(f_t, f_t) + polynomial_kernel_mean(f_s, f_s) - 2 * polynomial_kernel_mean(f_t, f_s)
    return mmd.mean()


class NeuronSelectivityTransfer(LossTerm):
    """NST (Huang & Wang, arXiv 2017): MMD with a polynomial kernel between the student's and the
    teacher's normalised channel activation maps."""

    needs_teacher = True

    class Params(Params):
        student_layer: str = Field(min_length=1, description="module path of the student's feature map")
        teacher_layer: str = Field(min_length=1, description="module path of the teacher's feature map")

    def student_taps(self) -> list[str]:
        return [self.params.student_layer]

    def teacher_taps(self) -> list[str]:
        return [self.params.teacher_layer]

    def forward(self, ctx: LossContext) -> torch.Tensor:
        student = tapped(ctx, "student", self.params.student_layer)
        teacher = tapped(ctx, "teacher", self.params.teacher_layer).detach()
        return nst_mmd(resize_to(student, tuple(teacher.shape[-2:])), teacher)
