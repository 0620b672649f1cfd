"""Logit standardization: Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

KD shares one temperature between teacher and student, which asks the student to match the
teacher's logit range and variance as well as its logit relations. The paper z-scores each
sample's logits before the temperature softmax:

    Z(z) = (z - mean(z)) / (std(z) + eps),   p = softmax(Z(z) / T)

so each row has mean 0 and standard deviation 1, and the loss is invariant to shifting a row of
logits and to scaling it by a positive factor. ``std`` is the sample standard deviation over the
classes (Bessel-corrected, as ``torch.std`` and the authors' code compute it); ``eps = 1e-7``.

The temperature T is then a *base* temperature applied to standardized logits (the paper's
temperature is ``T * std(z)`` per sample). Standardized logits have unit spread, so their softmax is
already soft: the authors' CIFAR-100 runs use a base temperature of 2 (3 for some pairs) with a KD
weight of 9, instead of vanilla KD's T = 4; the defaults of the terms stay those of the methods
themselves, so set the temperature (and the weight) in the recipe when turning it on.
"""

from __future__ import annotations

import torch

EPS = 1e-7


def standardize(logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Z-score each row (sample) of a (B, K) logit tensor over its K classes, in float32."""
    logits = logits.float()
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


def maybe_standardize(student: torch.Tensor, teacher: torch.Tensor, enabled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logit tensors standardized when ``enabled``, otherwise unchanged (as float32)."""
    if not enabled:
        return student.float(), teacher.float()
    return standardize(student), standardize(teacher)
