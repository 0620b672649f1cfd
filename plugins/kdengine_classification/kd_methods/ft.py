"""FT (Factor Transfer): Kim et al., NeurIPS 2018, "Paraphrasing Complex Network: Network
Compression via Factor Transfer".

A paraphraser P = (encoder E, decoder D) on the teacher's feature t compresses it to a "factor"
F_T = E(t) of k * C_t channels (the rate k = 0.5 by default); a translator T on the student's
feature s maps it to a factor F_S = T(s) of the same shape. The student learns to match the
teacher's factor, each flattened per sample and L2-normalised:

    L_FT  = 1/B * sum_b || F_T,b / ||F_T,b||_2 - F_S,b / ||F_S,b||_2 ||_p        (p = 1)
    L_rec = mean_{b, c, h, w} (D(E(t)) - t)^2                                     (the paraphraser's training loss)
    L     = L_FT + reconstruction_weight * L_rec

E: conv3x3 (C_t -> C_t), conv3x3 (C_t -> k C_t), conv3x3 (k C_t -> k C_t); D mirrors it with
transposed 3x3 convolutions (k C_t -> C_t -> C_t -> C_t, the last one linear, so it can
reconstruct negative responses too); T: conv3x3 (C_s -> C_s), conv3x3 (C_s -> k C_t),
conv3x3 (k C_t -> k C_t). Every layer but D's last is followed by BatchNorm and LeakyReLU(0.1),
all keep the grid (stride 1). When the grids differ the student feature is first brought to the
teacher's grid (pooled when larger, interpolated when smaller). The p-norm is the paper's: summed
over the elements of each sample (the authors' code averages them instead, which only rescales
the loss by the factor size; their weight beta = 500 is for that average).

**Deviation from the paper, stated plainly.** The paper trains the paraphraser first, on the
frozen teacher alone, by reconstruction, and then freezes it while the student learns. kdengine
trains a loss term's modules together with the student in one stage, so here the paraphraser is
trained at the same time, by L_rec summed into this term (weighted by ``reconstruction_weight``;
the recipe's weight scales both). The teacher's factor is detached in L_FT: the student (and the
translator) follow the paraphraser, but the paraphraser never bends towards the student, which
would let both collapse onto a trivial factor. Early in training the factors are therefore those
of a paraphraser still learning. L_rec depends on the teacher alone: it adds no gradient to the
student.

**Minimum.** L_FT >= 0, with 0 exactly when each sample's translated factor is a positive multiple
of the teacher's (the normalisation discards scale); its gradient into the student is then zero.
L_rec is not zero at teacher = student: it is the paraphraser's reconstruction error, which only
training the paraphraser lowers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdengine import KDEngineError, LossContext, LossTerm, Params

from kdengine_classification.kd_methods._common import resize_to
from kdengine_classification.kd_methods.vid import named_map, through


def _block(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.1)]


def conv_stack(in_channels: int, out_channels: int) -> nn.Sequential:
    """E and T: three 3x3 convolutions, in -> in, in -> out, out -> out, each with BatchNorm and LeakyReLU."""
    return nn.Sequential(
        *_block(nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False), in_channels),
        *_block(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), out_channels),
        *_block(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), out_channels),
    )


def decoder(factor_channels: int, channels: int) -> nn.Sequential:
    """D: transposed 3x3 convolutions factor -> C_t -> C_t -> C_t, the last one linear."""
    return nn.Sequential(
        *_block(nn.ConvTranspose2d(factor_channels, channels, 3, padding=1, bias=False), channels),
        *_block(nn.ConvTranspose2d(channels, channels, 3, padding=1, bias=False), channels),
        nn.ConvTranspose2d(channels, channels, 3, padding=1, bias=True),
    )


class Paraphraser(nn.Module):
    """The teacher-side autoencoder: ``encoder`` gives the factor, ``decoder`` reconstructs from it."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = conv_stack(channels, factor_channels)
        self.decoder = decoder(factor_channels, channels)


def factor_distance(student_factor: torch.Tensor, teacher_factor: torch.Tensor, p: float) -> torch.Tensor:
    """1/B sum_b || F_T,b/||F_T,b||_2 - F_S,b/||F_S,b||_2 ||_p, factors flattened per sample."""
    s = F.normalize(student_factor.flatten(1), p=2, dim=1)
    t = F.normalize(teacher_factor.flatten(1), p=2, dim=1)
    return torch.linalg.vector_norm(t - s, ord=p, dim=1).mean()


class FactorTransfer(LossTerm):
    """FT (Kim et al., NeurIPS 2018): L1 between normalised teacher (paraphraser) and student (translator) factors, paraphraser trained alongside."""

    needs_teacher = True
    #: The paraphraser's and translator's BatchNorms normalise with the batch's statistics.
    per_sample = False

    class Params(Params):
        student_layer: str = Field(min_length=1, description="module path of the student's translated layer")
        teacher_layer: str = Field(min_length=1, description="module path of the teacher's paraphrased layer")
        rate: float = Field(0.5, gt=0, le=4, description="factor channels = rate * teacher channels (the paper's k)")
        p: float = Field(1.0, ge=1, description="the norm of the factor difference (1 in the paper)")
        reconstruction_weight: float = Field(1.0, ge=0, description="weight of the paraphraser's reconstruction "
                                                                     "loss, summed into this term")

    def __init__(self, params=None):
        super().__init__(params)
        self.paraphraser: Paraphraser | None = None
        self.translator: nn.Module | None = None

    def student_taps(self) -> list[str]:
        return [self.params.student_layer]

    def teacher_taps(self) -> list[str]:
        return [self.params.teacher_layer]

    def setup(self, ctx: LossContext) -> None:
        student = named_map(ctx, "student", self.params.student_layer, "ft")
        teacher = named_map(ctx, "teacher", self.params.teacher_layer, "ft")
        channels = teacher.shape[1]
        factor = max(1, round(channels * self.params.rate))
        self.paraphraser = Paraphraser(channels, factor).to(student.device)
        self.translator = conv_stack(student.shape[1], factor).to(student.device)

    def parts(self, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_FT, L_rec) on the batch."""
        if self.paraphraser is None:
            raise KDEngineError("ft: setup(ctx) must run before the first forward (it creates the paraphraser "
                                "and the translator)")
        student = named_map(ctx, "student", self.params.student_layer, "ft")
        teacher = named_map(ctx, "teacher", self.params.teacher_layer, "ft").detach()
        teacher_factor = through(self.paraphraser.encoder, teacher)
        reconstruction = through(self.paraphraser.decoder, teacher_factor)
        student_factor = through(self.translator, resize_to(student, tuple(teacher.shape[-2:])))
        transfer = factor_distance(student_factor, teacher_factor.detach(), self.params.p)
        return transfer, torch.mean((reconstruction - teacher) ** 2)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        transfer, reconstruction = self.parts(ctx)
        return transfer + self.params.reconstruction_weight * reconstruction
