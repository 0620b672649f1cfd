"""Scoring a model with the recipe's metrics on one split."""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.components import DataInfo, DatasetProvider
from kdengine.recipe import ComponentSpec, Recipe
from kdengine.train.gather import gather_pieces
from kdengine.runtime.tensors import as_float, prepare_inputs


def build_metrics(recipe: Recipe, info: DataInfo) -> list[tuple[ComponentSpec, Any]]:
    catalog = get_catalog()
    out = []
    for spec in recipe.metric:
        component = catalog.get("metric", spec.name)(spec.params)
        out.append((spec, component.build(info)))
    return out


def local(metric):
    """``metric`` computing on what this process was given, without syncing its state again.

    Outputs are gathered across processes before ``update``, so every process already holds the
    whole split, and torchmetrics' own sync at ``compute`` would count every sample once per
    process. It reads ``_to_sync``, which it copies from ``sync_on_compute`` only when the metric
    is made (and after a ``forward``), so setting the public flag alone does not stop it.
    """
    metric.sync_on_compute = False
    metric._to_sync = False
    return metric


@dataclass
class Scorer:
    """The recipe's metrics, computed over a whole split (gathered across processes)."""

    accelerator: Accelerator
    provider: DatasetProvider
    metrics: list[tuple[ComponentSpec, Any]]

    def __post_init__(self) -> None:
        self.metrics = [(spec, local(metric).to(self.accelerator.device)) for spec, metric in self.metrics]

    def __call__(self, model: nn.Module, loader: DataLoader, channels_last: bool) -> dict[str, float]:
        model.eval()
        for _, metric in self.metrics:
            metric.reset()
        # Only the model runs under autocast: a dataset that builds its inputs in the main process
        # (e.g. degrading an HR image with a convolution) must not get reduced-precision tensors.
        with torch.inference_mode():
            for inputs, targets in loader:
                inputs = prepare_inputs(inputs, channels_last)
                with self.accelerator.autocast():
                    outputs = self.provider.predict(model, inputs)
                for outputs, targets in gather_pieces(self.accelerator, outputs, targets):
                    outputs = as_float(outputs)
                    for _, metric in self.metrics:
                        metric.update(outputs, targets)
        values: dict[str, float] = {}
        for spec, metric in self.metrics:
            result = metric.compute()
            if isinstance(result, dict):
                values.update({k: float(v) for k, v in result.items()})
            else:
                values[spec.name] = float(result)
        return values


def is_better(value: float, best: float | None, higher: bool) -> bool:
    """Whether an epoch's monitored value beats the best so far. A non-finite value (a diverged
    epoch's NaN) is never best, so it cannot pin the best epoch: every comparison with NaN is false."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value > best if higher else value < best
