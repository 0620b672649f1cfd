"""Models of a run: how they are described in tables, counted, and made ready to teach."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn

from kdengine.recipe import ComponentSpec


def describe(spec: ComponentSpec) -> str:
    """``name(key=value, ...)``: how a model appears in tables."""
    if not spec.params:
        return spec.name
    args = ", ".join(f"{k}={v}" for k, v in spec.params.items())
    return f"{spec.name}({args})"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def ready_to_teach(model: nn.Module, accelerator: Accelerator, channels_last: bool) -> nn.Module:
    """A trained model frozen on the run's device, in the stage's memory format (never wrapped
    for DDP: the teacher has no gradients to all-reduce)."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return frozen(accelerator.prepare_model(model.to(accelerator.device), evaluation_mode=True))
