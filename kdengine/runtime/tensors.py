"""Moving batches and model outputs around: to the device, to float32, to channels_last."""

from __future__ import annotations

from typing import Any

import torch


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def as_float(outputs: Any) -> Any:
    """Model outputs in float32 for metrics (bf16 outputs lose digits), also inside lists/tuples:
    whole images of different sizes are evaluated as lists."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(as_float(o) for o in outputs)
    return outputs


def prepare_inputs(inputs: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs
