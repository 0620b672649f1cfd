"""Tiled inference: run an SR model over overlapping LR tiles so large images fit in memory."""

from __future__ import annotations

import torch
from torch import nn


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def tiled_predict(model: nn.Module, inputs: torch.Tensor, scale: int, tile: int = 96,
                  overlap: int = 8) -> torch.Tensor:
    """``model(inputs)`` for (B, C, h, w) LR inputs, computed tile by tile when larger than ``tile``.

    Tiles of ``tile`` LR pixels overlap by ``2 * overlap``; each tile keeps only its interior (its
    outer ``overlap`` pixels are dropped except at the image border), and where kept regions still
    overlap the outputs are averaged.
    """
    height, width = inputs.shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        return model(inputs)
    step = tile - 2 * overlap
    out = None
    weight = None
    for top in _starts(height, tile, step):
        for left in _starts(width, tile, step):
            patch = inputs[..., top: top + tile, left: left + tile]
            pred = model(patch)
            if out is None:
                out = pred.new_zeros(*pred.shape[:2], height * scale, width * scale)
                weight = pred.new_zeros(1, 1, height * scale, width * scale)
            bottom, right = top + patch.shape[-2], left + patch.shape[-1]
            r0 = top + (overlap if top > 0 else 0)
            r1 = bottom - (overlap if bottom < height else 0)
            c0 = left + (overlap if left > 0 else 0)
            c1 = right - (overlap if right < width else 0)
            kept = pred[..., (r0 - top) * scale: (r1 - top) * scale, (c0 - left) * scale: (c1 - left) * scale]
            out[..., r0 * scale: r1 * scale, c0 * scale: c1 * scale] += kept
            weight[..., r0 * scale: r1 * scale, c0 * scale: c1 * scale] += 1
    return out / weight
