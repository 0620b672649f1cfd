"""VID: Ahn et al., CVPR 2019, "Variational Information Distillation for Knowledge Transfer".

VID maximises a variational lower bound on the mutual information between a teacher feature t
and the student feature s it is paired with. The intractable q(t | s) is a Gaussian whose mean
is regressed from the student and whose variance is learned, one per teacher channel c:

    mu(s)       = conv1x1 -> ReLU -> conv1x1 -> ReLU -> conv1x1   (student -> teacher channels)
    sigma_c^2   = softplus(alpha_c) + eps
    L_VID       = sum_pairs mean_{b, c, h, w} 1/2 * ( log sigma_c^2 + (t_bchw - mu(s)_bchw)^2 / sigma_c^2 )

This is the negative log-likelihood -log q(t | s) of the paper's Eq. (4)-(6) without its constant
(1/2 * log 2 pi), averaged over the elements of t instead of summed over them (the recipe's weight
absorbs the scale). The hidden width of the regressor is ``mid_channels`` (the teacher's channel
count when unset, as in the authors' code), sigma^2 starts at ``init_variance`` (5, theirs), and
the regressors and alphas are created in ``setup`` from a real batch, trained with the student and
dropped at export. When the grids differ the student feature is first brought to the teacher's
grid (average-pooled when larger, bilinearly interpolated when smaller).

**Its minimum is not zero.** At mu(s) = t the squared term vanishes, the gradient into the
student is zero, and the loss is 1/2 * mean_c log sigma_c^2 per pair: negative once sigma^2 < 1,
and bounded below by 1/2 * log(eps) as the variance shrinks onto a perfect fit. For a fixed
residual r the best variance is sigma_c^2 = mean r_c^2 (the term then reads
1/2 * (log mean r_c^2 + 1)), so the learned variance measures how well each teacher channel is
predicted and down-weights the channels the student cannot follow.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from kdengine import KDEngineError, LossContext, LossTerm, Params

from kdengine_classification.kd_methods._common import resize_to, tapped


def named_map(ctx: LossContext, role: str, path: str, method: str) -> torch.Tensor:
    """``tapped`` with the method, the layer and its shape in any error (shared by the feature terms)."""
    try:
        return tapped(ctx, role, path)
    except KDEngineError as exc:
        features = ctx.student_features if role == "student" else ctx.teacher_features
        shape = f" of shape {tuple(features[path].shape)}" if path in features else ""
        raise KDEngineError(f"{method}: {role} layer '{path}'{shape}: {exc}") from None


def through(module: nn.Module, feature: torch.Tensor) -> torch.Tensor:
    """``module(feature)`` in the module's own dtype, returned as float32."""
    weight = next(module.parameters(), None)
    if weight is not None:
        feature = feature.to(weight.dtype)
    return module(feature).float()


def regressor(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """The mean of q(t | s): three 1x1 convolutions with ReLUs between them."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False), nn.ReLU(),
        nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False), nn.ReLU(),
        nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=False),
    )


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """mean over elements of 1/2 * (log var + (target - mean)^2 / var); ``variance`` is (C,)."""
    var = variance.view(1, -1, 1, 1)
    return (0.5 * (torch.log(var) + (target - mean) ** 2 / var)).mean()


class VariationalInformation(LossTerm):
    """VID (Ahn et al., CVPR 2019): Gaussian NLL of teacher features under a regressed mean and a learned per-channel variance."""

    needs_teacher = True

    class Params(Params):
        #: (student layer, teacher layer) module paths, one pair per distilled position.
        pairs: list[tuple[str, str]] = Field(min_length=1, description="(student layer, teacher layer) pairs")
        mid_channels: int | None = Field(None, ge=1, description="hidden width of the regressor "
                                                                 "(default: the teacher's channels)")
        init_variance: float = Field(5.0, gt=0, description="initial sigma^2 of every teacher channel")
        eps: float = Field(1e-5, gt=0, description="lower bound added to softplus(alpha)")

    def __init__(self, params=None):
        super().__init__(params)
        self.regressors: nn.ModuleList | None = None
        self.alphas: nn.ParameterList | None = None

    def student_taps(self) -> list[str]:
        return [s for s, _ in self.params.pairs]

    def teacher_taps(self) -> list[str]:
        return [t for _, t in self.params.pairs]

    def setup(self, ctx: LossContext) -> None:
        regressors, alphas = [], []
        # softplus(alpha) + eps = init_variance
        start = math.log(math.expm1(max(self.params.init_variance - self.params.eps, 1e-12)))
        for student_layer, teacher_layer in self.params.pairs:
            student = named_map(ctx, "student", student_layer, "vid")
            teacher = named_map(ctx, "teacher", teacher_layer, "vid")
            channels = teacher.shape[1]
            mid = self.params.mid_channels or channels
            regressors.append(regressor(student.shape[1], mid, channels).to(student.device))
            alphas.append(nn.Parameter(torch.full((channels,), start, device=student.device)))
        self.regressors = nn.ModuleList(regressors)
        self.alphas = nn.ParameterList(alphas)

    def variances(self) -> list[torch.Tensor]:
        """sigma^2 = softplus(alpha) + eps of each pair, (C_t,) each, in float32."""
        return [nn.functional.softplus(a.float()) + self.params.eps for a in self.alphas]

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if self.regressors is None:
            raise KDEngineError("vid: setup(ctx) must run before the first forward (it creates the regressors)")
        total = 0.0
        for (student_layer, teacher_layer), mean_of, variance in zip(self.params.pairs, self.regressors,
                                                                     self.variances()):
            student = named_map(ctx, "student", student_layer, "vid")
            teacher = named_map(ctx, "teacher", teacher_layer, "vid").detach()
            mean = through(mean_of, resize_to(student, tuple(teacher.shape[-2:])))
            total = total + gaussian_nll(teacher, mean, variance)
        return total
