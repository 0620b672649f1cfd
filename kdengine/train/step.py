"""One optimizer step: the batch's forward and backward (as micro-batches when a memory budget
asks for them), the gradient check and clipping, the update, and what a non-finite value means."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import slice_tensors
from torch import nn

from kdengine.errors import TrainingError
from kdengine.recipe import TrainSpec
from kdengine.teacher.sources import StepTeacher
from kdengine.train.optim import Schedule


def accumulate(accelerator: Accelerator, objective: nn.Module, weights: list[float], term_names: list[str],
               inputs: torch.Tensor, targets: Any, teach: StepTeacher, micro_batch: int | None):
    """Forward and backward one batch, as micro-batches of ``micro_batch`` rows with gradient
    accumulation when given (each micro-batch's loss weighted by its share of the rows, so the
    gradient is the batch's). ``teach(inputs, rows)`` gives the teacher's outputs for a slice.
    Returns the batch's total loss and each term's (detached), and a problem (non-finite loss)."""
    rows = inputs.shape[0]
    if micro_batch is None or micro_batch >= rows:
        bounds = [slice(0, rows)]
    else:
        bounds = [slice(a, min(a + micro_batch, rows)) for a in range(0, rows, micro_batch)]
    total_sum, value_sums = 0.0, [0.0] * len(weights)
    for i, rows_slice in enumerate(bounds):
        whole = len(bounds) == 1
        x = inputs if whole else inputs[rows_slice]
        y = targets if whole else slice_tensors(targets, rows_slice)
        with accelerator.autocast():
            t_out, t_feats = teach(x, rows_slice)
            _, values = objective(x, y, t_out, t_feats)
            total = sum(w * v for w, v in zip(weights, values))
        if not torch.isfinite(total):
            bad = [n for n, v in zip(term_names, values) if not torch.isfinite(v)]
            return None, None, f"non-finite loss (terms: {', '.join(bad) or 'total'})"
        share = 1.0 if whole else (rows_slice.stop - rows_slice.start) / rows
        # Gradients of all but the last micro-batch stay local (no DDP all-reduce until the last).
        sync = contextlib.nullcontext() if i == len(bounds) - 1 else accelerator.no_sync(objective)
        with sync:
            accelerator.backward(total if whole else total * share)
        total_sum = total_sum + total.detach().float() * share
        value_sums = [s + v.detach().float() * share for s, v in zip(value_sums, values)]
    return total_sum, value_sums, None


def train_step(accelerator: Accelerator, objective: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
               train: TrainSpec, weights: list[float], term_names: list[str], inputs: torch.Tensor, targets: Any,
               teach: StepTeacher, micro_batch: int | None):
    """Forward, backward and update on one batch. Returns the batch's total loss and each term's
    (detached), or a problem (a non-finite loss or gradient) with the update not made."""
    total, values, problem = accumulate(accelerator, objective, weights, term_names, inputs, targets,
                                        teach, micro_batch)
    if problem is None:
        # The gradient norm (clipped or not) tells whether any gradient is inf or NaN.
        norm = accelerator.clip_grad_norm_(objective.parameters(), train.grad_clip or float("inf"))
        if norm is not None and not torch.isfinite(norm):
            problem = "non-finite gradients"
    if problem is not None:
        optimizer.zero_grad(set_to_none=True)
        return None, None, problem
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()
    return total, values, None


def on_problem(train: TrainSpec, stage: str, problem: str, epoch: int, step: int, checkpoints: Path) -> None:
    """``train.on_nan``: stop the run (the last good checkpoint stays) or let the batch be skipped."""
    if train.on_nan == "stop":
        raise TrainingError(
            f"{stage}: {problem} at epoch {epoch}, step {step + 1}; the last good checkpoint is in "
            f"{checkpoints}. Lower the learning rate or check the data, or set train.on_nan = \"skip\"."
        )
