"""One optimizer step: the batch's forward and backward (as micro-batches when a memory budget
asks for them), the gradient check and clipping, the update, and what a non-finite value means.

A non-finite loss is a problem for ``train.on_nan``, and so are non-finite gradients in bf16 or
float32. Under fp16 an overflow of the scaled gradients is normal: the gradient scaler skips that
update and halves its scale, the learning-rate schedule waits (it follows the updates made), and
the step is counted as ``scaler_skipped``. Only when the gradients stay non-finite with the scale
below 1 (float16 overflows without any scaling: the gradients themselves are inf or NaN) is it a
problem for ``train.on_nan`` again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
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
               inputs: torch.Tensor, targets: Any, teach: StepTeacher, micro_batch: int | None,
               labelled: int | None = None):
    """Forward and backward one batch, as micro-batches of ``micro_batch`` rows with gradient
    accumulation when given (each micro-batch's loss weighted by its share of the rows, so the
    gradient is the batch's). ``teach(inputs, rows)`` gives the teacher's outputs for a slice.
    Returns the batch's total loss and each term's (detached), and a problem (non-finite loss).
    ``labelled``: the batch's first rows that carry labels, the rest being transfer images (the
    recipe refuses micro-batches with a transfer set, so such a batch is one pass)."""
    rows = inputs.shape[0]
    if micro_batch is None or micro_batch >= rows or labelled is not None:
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
            _, values = objective(x, y, t_out, t_feats, labelled) if labelled is not None else objective(x, y, t_out, t_feats)
            values = [v.float() for v in values]  # the sum and its check in float32 whatever autocast gave
            total = sum(w * v for w, v in zip(weights, values))
        finite = torch.isfinite(total)
        if not finite:
            bad = [n for n, v in zip(term_names, values) if not torch.isfinite(v)]
        if accelerator.num_processes > 1:
            # Every process must skip together: one that returned before its backward would leave
            # the others' gradient all-reduce waiting for it, then pair it with its next batch.
            finite = everywhere(accelerator, finite)
            if not finite and torch.isfinite(total):
                return None, None, "non-finite loss on another process"
        if not finite:
            return None, None, f"non-finite loss (terms: {', '.join(bad) or 'total'})"
        share = 1.0 if whole else (rows_slice.stop - rows_slice.start) / rows
        # Gradients of all but the last micro-batch stay local (no DDP all-reduce until the last).
        sync = contextlib.nullcontext() if i == len(bounds) - 1 else accelerator.no_sync(objective)
        with sync:
            accelerator.backward(total if whole else total * share)
        total_sum = total_sum + total.detach().float() * share
        value_sums = [s + v.detach().float() * share for s, v in zip(value_sums, values)]
    return total_sum, value_sums, None


def everywhere(accelerator: Accelerator, flag: torch.Tensor) -> bool:
    """Whether ``flag`` holds on every process (one all-reduce of a single number)."""
    import torch.distributed as dist

    agreed = flag.to(device=accelerator.device, dtype=torch.int32).reshape(1)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


#: Under fp16, a scale below this after a skipped step means the gradients are non-finite
#: without any scaling: a problem for ``train.on_nan``, not an overflow.
MIN_GRAD_SCALE = 1.0


@dataclass
class StepOutcome:
    #: The batch's total loss and each term's (detached); None when ``problem`` is set.
    total: torch.Tensor | None = None
    values: list[torch.Tensor] = field(default_factory=list)
    #: A non-finite loss or gradient (for ``train.on_nan``): the update was not made.
    problem: str | None = None
    #: fp16: the gradient scaler found overflowed gradients, skipped the update and lowered its scale.
    scaler_skipped: bool = False


def train_step(accelerator: Accelerator, objective: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
               train: TrainSpec, weights: list[float], term_names: list[str], inputs: torch.Tensor, targets: Any,
               teach: StepTeacher, micro_batch: int | None, labelled: int | None = None) -> StepOutcome:
    """Forward, backward and update on one batch (``optimizer`` prepared by ``accelerator``);
    ``labelled``: see :func:`accumulate`."""
    total, values, problem = accumulate(accelerator, objective, weights, term_names, inputs, targets,
                                        teach, micro_batch, labelled)
    scaler = accelerator.scaler
    if problem is None and (train.grad_clip or scaler is None):
        # Accelerate unscales fp16 gradients first, so the clip applies to the true gradients.
        # Without a scaler, the norm (clipped or not) tells whether any gradient is inf or NaN.
        norm = accelerator.clip_grad_norm_(objective.parameters(), train.grad_clip or float("inf"))
        if scaler is None and norm is not None and not torch.isfinite(norm):
            problem = "non-finite gradients"
    if problem is not None:
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(problem=problem)
    optimizer.step()  # fp16: the scaler's step, skipped when the gradients overflowed
    optimizer.zero_grad(set_to_none=True)
    if getattr(optimizer, "step_was_skipped", False):
        if scaler.get_scale() < MIN_GRAD_SCALE:
            return StepOutcome(problem=f"non-finite gradients (fp16: they overflow even with the gradient "
                                       f"scale down to {scaler.get_scale():.3g})")
        return StepOutcome(total, values, scaler_skipped=True)
    schedule.step()
    return StepOutcome(total, values)


def on_problem(train: TrainSpec, stage: str, problem: str, epoch: int, step: int, checkpoints: Path) -> None:
    """``train.on_nan``: stop the run (the last good checkpoint stays) or let the batch be skipped."""
    if train.on_nan == "stop":
        raise TrainingError(
            f"{stage}: {problem} at epoch {epoch}, step {step + 1}; the last good checkpoint is in "
            f"{checkpoints}. Lower the learning rate or check the data, or set train.on_nan = \"skip\"."
        )
