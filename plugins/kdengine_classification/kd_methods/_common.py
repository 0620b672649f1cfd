"""Helpers the feature-based terms share: fetching tapped features and matching their grids."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdengine import KDEngineError, LossContext
from kdengine import as_feature_map


def tapped(ctx: LossContext, role: str, path: str) -> torch.Tensor:
    """The feature tapped at ``path`` in the student or teacher, as a float (B, C, H, W) map."""
    features = ctx.student_features if role == "student" else ctx.teacher_features
    if path not in features:
        raise KDEngineError(
            f"no {role} feature at '{path}' in the loss context; the term asks for it through "
            f"{role}_taps(), so the engine should have tapped it"
        )
    return as_feature_map(features[path]).float()


def resize_to(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a (B, C, H, W) map to ``size``: average-pool when shrinking, bilinear when growing.

    Pooling keeps every activation's contribution when a grid is coarser; interpolation is only
    used for the rarer case of a student grid smaller than the teacher's.
    """
    if tuple(feature.shape[-2:]) == tuple(size):
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


def pooled_vector(feature: torch.Tensor) -> torch.Tensor:
    """A (B, C) vector from a tapped feature: global average over space or tokens."""
    if feature.dim() == 2:
        return feature
    if feature.dim() == 3:  # transformer tokens (B, N, C)
        return feature.mean(dim=1)
    if feature.dim() == 4:
        return feature.mean(dim=(2, 3))
    raise KDEngineError(f"cannot pool a feature of shape {tuple(feature.shape)} to a vector")
