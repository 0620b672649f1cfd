"""Loss terms of the edge task.

All terms take raw logits ``(B, 1, H, W)``; targets are edge probabilities in [0, 1] of the same
shape. Pixels whose target is negative (batch padding, see ``transforms.PAD``) are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdengine import DataError, KDEngineError, LossContext, LossTerm, Params

from kdengine_edges.transforms import split_targets


def _targets(ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, valid) as float tensors shaped like the student's logits."""
    target, _ = split_targets(ctx.targets)
    target = target.to(ctx.student.dtype)
    if target.shape != ctx.student.shape:
        raise DataError(
            f"loss: the edge target's shape {tuple(target.shape)} does not match the student's output "
            f"{tuple(ctx.student.shape)}: the model must return one edge-logit map per image at the input's size"
        )
    valid = (target >= 0).to(target.dtype)
    return target.clamp(min=0), valid


def _masked_mean(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (loss * valid).sum() / valid.sum().clamp(min=1.0)


class WeightedBCE(LossTerm):
    """Binary cross-entropy with logits, edge pixels weighted by ``pos_weight``.

    ``L = mean_i -[w_p * y_i * log s(z_i) + (1 - y_i) * log(1 - s(z_i))]`` with ``s`` the sigmoid,
    ``z`` the student's logits and ``y`` the (possibly soft) ground truth; this is
    ``torch.nn.functional.binary_cross_entropy_with_logits(z, y, pos_weight=w_p)``. Edges cover a
    few percent of the pixels, so ``w_p`` ~ 10 stops the student predicting "no edge" everywhere.
    """

    summary = "BCE with logits to the ground truth, edge pixels weighted by pos_weight"

    class Params(Params):
        pos_weight: float = Field(10.0, gt=0.0, description="weight of the edge (positive) pixels")

    def forward(self, ctx: LossContext) -> torch.Tensor:
        target, valid = _targets(ctx)
        pos_weight = torch.tensor(self.params.pos_weight, device=ctx.student.device,
                                  dtype=ctx.student.dtype)
        loss = F.binary_cross_entropy_with_logits(
            ctx.student, target, pos_weight=pos_weight, reduction="none"
        )
        return _masked_mean(loss, valid)


class SigmoidMSE(LossTerm):
    """Mean squared error between the student's and the frozen teacher's edge probabilities.

    ``L = mean_i (s(z^S_i) - s(z^T_i))^2`` with ``s`` the sigmoid and ``z^S``, ``z^T`` the student
    and teacher logits: the response-based distillation term of the edge recipe (Hinton et al.,
    "Distilling the Knowledge in a Neural Network", 2015, applied per pixel to a sigmoid output).
    """

    summary = "MSE between student and teacher sigmoid edge maps (distillation)"
    needs_teacher = True

    class Params(Params):
        pass

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if ctx.teacher is None:
            raise KDEngineError("loss: sigmoid_mse needs the teacher's output; it is only used in distilled stages")
        teacher = torch.sigmoid(ctx.teacher.detach().to(ctx.student.dtype))
        return F.mse_loss(torch.sigmoid(ctx.student), teacher)


class BalancedBCE(LossTerm):
    """Class-balanced BCE of HED (Xie & Tu, "Holistically-Nested Edge Detection", ICCV 2015).

    Per image, with ``Y+`` the edge pixels, ``Y-`` the non-edge pixels and ``beta = |Y-| / |Y|``:
    ``L = -beta * sum_{Y+} log s(z_i) - (1 - beta) * sum_{Y-} log(1 - s(z_i))``.
    Soft targets follow RCF (Liu et al., CVPR 2017): a pixel is an edge when ``y >= eta``, a
    non-edge when ``y == 0``, and ignored in between (annotators disagree there). The per-image sum
    is divided by the number of pixels counted, so the loss scale does not grow with image size.
    """

    summary = "HED class-balanced BCE (Xie & Tu 2015); soft labels as in RCF"

    class Params(Params):
        eta: float = Field(0.5, gt=0.0, le=1.0,
                           description="soft targets at or above eta are edges; in (0, eta) ignored")

    def forward(self, ctx: LossContext) -> torch.Tensor:
        target, valid = _targets(ctx)
        positive = (target >= self.params.eta).to(target.dtype) * valid
        negative = (target <= 0).to(target.dtype) * valid
        dims = tuple(range(1, target.dim()))
        n_pos = positive.sum(dim=dims, keepdim=True)
        n_neg = negative.sum(dim=dims, keepdim=True)
        beta = n_neg / (n_pos + n_neg).clamp(min=1.0)
        weight = beta * positive + (1.0 - beta) * negative
        loss = F.binary_cross_entropy_with_logits(ctx.student, positive, weight=weight,
                                                  reduction="none")
        per_image = loss.sum(dim=dims) / (n_pos + n_neg).flatten().clamp(min=1.0)
        return per_image.mean()
