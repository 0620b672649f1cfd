"""Dense distillation terms: per-pixel soft targets, per-pixel KL and channel-wise distillation.

``sigmoid_mse`` (the paper's edge KD term) compares two sigmoid maps: its gradient on a student
logit is ``2 (s_S - s_T) s_S (1 - s_S) / N``, which the sigmoid's slope damps wherever the student
is confident, and the term is an order of magnitude smaller than the ground-truth BCE. The terms
here are cross-entropies or divergences on the logits, whose gradient is ``s_S - s_T`` up to the
temperature, as for the ground-truth BCE, so the teacher's signal is on the same scale.

All three take raw logits; computations run in float32 (the loop may run under autocast). The
teacher's tensors are detached: the teacher is frozen.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kdengine import KDEngineError, LossContext, LossTerm, Params
from kdengine import as_feature_map, make_adapter

from kdengine_edges.transforms import split_targets

TEMPERATURE = Field(1.0, gt=0.0, description="softening temperature T (1: the plain term)")


def _teacher_logits(ctx: LossContext, name: str) -> torch.Tensor:
    """The teacher's output as a float32 tensor shaped like the student's."""
    if ctx.teacher is None:
        raise KDEngineError(f"{name} needs the teacher's output")
    teacher = ctx.teacher.detach()
    if teacher.is_inference():  # autograd may not save inference tensors for the backward pass
        teacher = teacher.clone()
    if teacher.shape != ctx.student.shape:
        raise KDEngineError(
            f"{name}: the teacher's output {tuple(teacher.shape)} and the student's "
            f"{tuple(ctx.student.shape)} differ in shape; both must predict the same maps"
        )
    return teacher.float()


def _valid_pixels(ctx: LossContext, logits: torch.Tensor) -> Optional[torch.Tensor]:
    """(B, 1, H, W) float mask of the pixels the edge collate did not pad (target >= 0), or None.

    Targets of another shape (class indices of a segmentation set, labels in a contract check)
    give None: every pixel counts.
    """
    targets = ctx.targets
    if not isinstance(targets, (torch.Tensor, dict)):
        return None
    mask = split_targets(targets)[0] if isinstance(targets, dict) else targets
    if (not isinstance(mask, torch.Tensor) or not mask.is_floating_point() or mask.dim() != 4
            or mask.shape[1] != 1 or mask.shape[0] != logits.shape[0] or mask.shape[-2:] != logits.shape[-2:]):
        return None
    return (mask >= 0).float()


def _pixel_mean(loss: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of a (B, K, H, W) per-pixel loss over its elements, padded pixels left out."""
    if valid is None:
        return loss.mean()
    valid = valid.expand_as(loss)
    return (loss * valid).sum() / valid.sum().clamp(min=1.0)


class SoftBCE(LossTerm):
    """Soft-target BCE: the binary form of Hinton et al., "Distilling the Knowledge in a Neural
    Network" (2015), per pixel.

    ``L = T^2 * mean_i -[p_i log s(z^S_i / T) + (1 - p_i) log(1 - s(z^S_i / T))]``,
    ``p_i = s(z^T_i / T)``, with ``s`` the sigmoid and ``z^S``, ``z^T`` the student's and teacher's
    logits. Its gradient on a student logit is ``T (s(z^S/T) - s(z^T/T)) / N``: zero exactly where
    the student matches the teacher, and (as T grows) ``(z^S - z^T) / (4N)``, logit matching,
    whatever T; the ``T^2`` keeps the scale independent of T as in Hinton et al. The value at the
    minimum is the teacher's binary entropy, not 0 (``pixel_kl`` subtracts it).

    No ``pos_weight``: weighting the positive part moves the minimiser from ``q = p`` to
    ``q = w p / (w p + 1 - p)``, so the student would be taught a thicker map than the teacher's.
    Class imbalance is the ground-truth term's job; here the gradient is already concentrated on
    the pixels where student and teacher disagree. Pixels the collate padded are left out.
    """

    summary = "BCE of student logits/T to the teacher's sigmoid(t/T), times T^2 (Hinton 2015, binary)"
    needs_teacher = True

    class Params(Params):
        temperature: float = TEMPERATURE

    def forward(self, ctx: LossContext) -> torch.Tensor:
        t = self.params.temperature
        teacher = torch.sigmoid(_teacher_logits(ctx, "soft_bce") / t)
        student = ctx.student.float()
        loss = F.binary_cross_entropy_with_logits(student / t, teacher, reduction="none")
        return _pixel_mean(loss, _valid_pixels(ctx, student)) * (t * t)


def class_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log-probabilities over the channel axis of (B, C, H, W) logits at temperature T.

    One channel is a binary map: its two classes are (edge, not edge) with logits (z, 0), so
    ``log p = (log s(z/T), log s(-z/T))``, the same as a softmax over (z/T, 0).
    """
    scaled = logits.float() / temperature
    if scaled.shape[1] == 1:
        return torch.cat([F.logsigmoid(scaled), F.logsigmoid(-scaled)], dim=1)
    return F.log_softmax(scaled, dim=1)


class PixelKL(LossTerm):
    """Pixel-wise distillation (Liu et al., "Structured Knowledge Distillation for Semantic
    Segmentation", CVPR 2019): each pixel's class distribution matched to the teacher's.

    ``L = T^2 / N * sum_i KL(p^T_i || p^S_i)``, ``p_i = softmax_c(z_i / T)`` over the channel axis,
    N the number of (unpadded) pixels; the teacher is the target, as in Hinton et al. (2015). A
    one-channel output (an edge map) is read as two classes with logits (z, 0), so the term is the
    binary KL; there it equals ``soft_bce`` minus the teacher's binary entropy: the same gradient,
    but a value that is 0 when the student matches the teacher.
    """

    summary = "per-pixel T^2 KL(teacher || student) over classes (Liu et al. 2019); 1 channel = binary"
    needs_teacher = True

    class Params(Params):
        temperature: float = TEMPERATURE

    def forward(self, ctx: LossContext) -> torch.Tensor:
        t = self.params.temperature
        student = ctx.student
        if student.dim() != 4:
            raise KDEngineError(f"pixel_kl expects (B, C, H, W) logits, got shape {tuple(student.shape)}")
        log_teacher = class_log_probs(_teacher_logits(ctx, "pixel_kl"), t)
        log_student = class_log_probs(student, t)
        kl = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(dim=1, keepdim=True)
        return _pixel_mean(kl, _valid_pixels(ctx, student)) * (t * t)


def _match_grid(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a (B, C, H, W) map to ``size``: average-pool to a coarser grid, bilinear to a finer one."""
    if tuple(feature.shape[-2:]) == tuple(size):
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


def channel_wise_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 / (B C) * sum_{b,c} sum_i phi(t)_{bci} log(phi(t)_{bci} / phi(s)_{bci})`` for two
    (B, C, H, W) maps, ``phi`` the softmax over the H*W locations of one channel at temperature T."""
    batch, channels = teacher.shape[:2]
    log_student = F.log_softmax(student.float().flatten(2) / temperature, dim=2)
    log_teacher = F.log_softmax(teacher.float().flatten(2) / temperature, dim=2)
    kl = F.kl_div(log_student, log_teacher, reduction="sum", log_target=True)
    return kl * (temperature * temperature) / (batch * channels)


class ChannelWiseDistillation(LossTerm):
    """Channel-wise distillation (Shu et al., "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021).

    Each channel of a map is turned into a distribution over its locations,
    ``phi(y_c)_i = exp(y_{c,i} / T) / sum_j exp(y_{c,j} / T)``, and
    ``L = T^2 / C * sum_c sum_i phi(y^T_c)_i log(phi(y^T_c)_i / phi(y^S_c)_i)``, averaged over
    the batch: the student learns where each of the teacher's channels fires most. Summing over
    locations (not averaging) keeps the scale independent of the image size.

    By default ``y`` are the output logits (one channel for an edge map: the distribution of the
    teacher's edge evidence over the image). With ``student_layer`` / ``teacher_layer`` (module
    paths, e.g. ``decoder.blocks.3`` of a U-Net; ``kdengine layers`` lists them) it distils tapped
    features instead: a 1x1 convolution owned by the term, created in ``setup`` when the channel
    counts differ, maps the student's channels to the teacher's, and the student's map is pooled
    (or interpolated) to the teacher's grid. The adapter trains with the student and is dropped at
    export. The edge plugin's U-Nets pad their input to a multiple of their encoder's stride, so
    their decoder grids cover the same area when teacher and student pad alike (the same
    ``encoder_depth``, or image sides that are multiples of 32). Padding from mixed-size batches
    is not masked (the edge datasets' training batches have one size).
    """

    summary = "channel-wise distillation: spatial softmax per channel, T^2 KL (Shu et al. 2021)"
    needs_teacher = True

    class Params(Params):
        temperature: float = TEMPERATURE
        student_layer: Optional[str] = Field(
            None, min_length=1, description="module path of a student feature (default: the output logits)")
        teacher_layer: Optional[str] = Field(
            None, min_length=1, description="module path of the teacher feature it is distilled from")

        @model_validator(mode="after")
        def _both_or_neither(self):
            if (self.student_layer is None) != (self.teacher_layer is None):
                raise ValueError("give both student_layer and teacher_layer (features) or neither (logits)")
            return self

    def __init__(self, params=None):
        super().__init__(params)
        self.adapter: nn.Module | None = None

    @property
    def on_features(self) -> bool:
        return self.params.student_layer is not None

    def student_taps(self) -> list[str]:
        return [self.params.student_layer] if self.on_features else []

    def teacher_taps(self) -> list[str]:
        return [self.params.teacher_layer] if self.on_features else []

    def _feature(self, ctx: LossContext, role: str) -> torch.Tensor:
        path = self.params.student_layer if role == "student" else self.params.teacher_layer
        features = ctx.student_features if role == "student" else ctx.teacher_features
        if path not in features:
            raise KDEngineError(f"cwd: no {role} feature tapped at '{path}'")
        feature = as_feature_map(features[path])
        if role == "teacher":
            feature = feature.detach()
            feature = feature.clone() if feature.is_inference() else feature
        return feature

    def setup(self, ctx: LossContext) -> None:
        if not self.on_features:
            return
        student, teacher = self._feature(ctx, "student"), self._feature(ctx, "teacher")
        self.adapter = make_adapter(student.shape[1], teacher.shape[1]).to(student.device)

    def _pair(self, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.on_features:
            student, teacher = ctx.student, _teacher_logits(ctx, "cwd")
            if student.dim() != 4:
                raise KDEngineError(f"cwd expects (B, C, H, W) maps, got shape {tuple(student.shape)}")
            return student, teacher
        if self.adapter is None:
            raise KDEngineError("cwd: setup(ctx) must run before the first forward (it creates the adapter)")
        student, teacher = self._feature(ctx, "student"), self._feature(ctx, "teacher")
        weight = next(self.adapter.parameters(), None)
        if weight is not None:
            student = student.to(weight.dtype)
        student = _match_grid(self.adapter(student).float(), tuple(teacher.shape[-2:]))
        return student, teacher

    def forward(self, ctx: LossContext) -> torch.Tensor:
        student, teacher = self._pair(ctx)
        return channel_wise_divergence(student, teacher, self.params.temperature)
