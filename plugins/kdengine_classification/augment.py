"""Batched, on-device training augmentations for classification.

Random crop, flip and colour jitter run on the whole batch at once (no per-sample Python work);
CutMix and Mixup come from torchvision.transforms.v2. They run in ``batch_augment``, before the
batch reaches the teacher and the student, so both see exactly the same images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torchvision.transforms import v2

from kdengine import Params


class AugmentParams(Params):
    #: Random crop after zero-padding each side by this many pixels (0: off).
    crop_padding: int = Field(0, ge=0)
    flip: bool = False
    #: Strength of random brightness, contrast and saturation changes (0: off).
    color_jitter: float = Field(0.0, ge=0, le=1)
    #: Beta(alpha, alpha) parameters of CutMix and Mixup (0: off).
    cutmix_alpha: float = Field(0.0, ge=0)
    mixup_alpha: float = Field(0.0, ge=0)
    #: Probability that a batch is mixed (with CutMix or Mixup, chosen at random).
    mix_prob: float = Field(1.0, ge=0, le=1)


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad then crop each image of the batch at its own random offset."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in [1 - s, 1 + s], per image; x in [0, 1]."""
    b = x.shape[0]
    factor = lambda: (1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * strength)
    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    if x.shape[1] == 3:
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * factor() + gray
    return x.clamp(0, 1)


class BatchAugment:
    def __init__(self, params: AugmentParams, num_classes: int, mean: torch.Tensor, std: torch.Tensor):
        self.params = params
        self.mean = mean.view(1, -1, 1, 1)
        self.std = std.view(1, -1, 1, 1)
        mixers = []
        if params.cutmix_alpha > 0:
            mixers.append(v2.CutMix(num_classes=num_classes, alpha=params.cutmix_alpha))
        if params.mixup_alpha > 0:
            mixers.append(v2.MixUp(num_classes=num_classes, alpha=params.mixup_alpha))
        self.mix = v2.RandomChoice(mixers) if mixers else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        if p.crop_padding:
            x = random_crop(x, p.crop_padding)
        if p.flip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if p.color_jitter:
            mean, std = self.mean.to(x.device), self.std.to(x.device)
            x = (color_jitter(x * std + mean, p.color_jitter) - mean) / std
        if self.mix is not None and torch.rand(()) < p.mix_prob:
            x, y = self.mix(x, y)
        return x, y
