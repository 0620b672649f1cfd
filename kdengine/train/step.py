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
from kdengine.teacher.base import StepTeacher
from kdengine.train.optim import Schedule


def accumulate(accelerator: Accelerator, objective: nn.Module, weights: list[float], term_names: list[str],
               inputs: torch.Tensor, targets: Any, teach: StepTeacher, micro_batch: int | None,
               labelled: int | None = None, eager: bool = True):
    """Forward and backward one batch, as micro-batches of ``micro_batch`` rows with gradient
    accumulation when given (each micro-batch's loss weighted by its share of the rows, so the
    gradient is the batch's). ``teach(inputs, rows)`` gives the teacher's outputs for a slice.
    ``labelled``: the batch's first rows that carry labels, the rest being transfer images (the
    recipe refuses micro-batches with a transfer set, so such a batch is one pass).

    Returns the batch's total loss and each term's (detached) and the terms' finite flags (a
    device tensor, one per term, never read here). ``eager`` (a gradient scaler, which must not
    see a non-finite loss's gradients) reads them after each micro-batch and returns before the
    backward of a non-finite one, with the problem as the third value (None when all is finite)."""
    rows = inputs.shape[0]
    if micro_batch is None or micro_batch >= rows or labelled is not None:
        bounds = [slice(0, rows)]
    else:
        bounds = [slice(a, min(a + micro_batch, rows)) for a in range(0, rows, micro_batch)]
    total_sum, value_sums = 0.0, [0.0] * len(weights)
    term_finite = torch.ones(len(weights) + 1, dtype=torch.bool, device=accelerator.device)  # the terms, the total
    for i, rows_slice in enumerate(bounds):
        whole = len(bounds) == 1
        x = inputs if whole else inputs[rows_slice]
        y = targets if whole else slice_tensors(targets, rows_slice)
        with accelerator.autocast():
            t_out, t_feats = teach(x, rows_slice)
            _, values = objective(x, y, t_out, t_feats, labelled) if labelled is not None else objective(x, y, t_out, t_feats)
            values = [v.float() for v in values]  # the sum and its check in float32 whatever autocast gave
            total = sum(w * v for w, v in zip(weights, values))
        term_finite = term_finite & torch.stack([torch.isfinite(v).all() for v in values + [total]])
        if eager:
            loss_finite = everywhere(accelerator, term_finite.all())
            if not loss_finite:
                return None, None, describe_problem(term_finite.tolist() + [False, True], term_names)
        share = 1.0 if whole else (rows_slice.stop - rows_slice.start) / rows
        # Gradients of all but the last micro-batch stay local (no DDP all-reduce until the last).
        # A non-finite loss backpropagates too when not ``eager``: its update is skipped on the device.
        sync = contextlib.nullcontext() if i == len(bounds) - 1 else accelerator.no_sync(objective)
        with sync:
            accelerator.backward(total if whole else total * share)
        total_sum = total_sum + total.detach().float() * share
        value_sums = [s + v.detach().float() * share for s, v in zip(value_sums, values)]
    return total_sum, value_sums, None if eager else term_finite


def everywhere(accelerator: Accelerator, flag: torch.Tensor, read: bool = True) -> bool | torch.Tensor:
    """Whether ``flag`` holds on every process: one all-reduce of a single number. ``read=False``
    keeps the answer on the device (no wait for it), as a bool tensor."""
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        agreed = flag.to(device=accelerator.device, dtype=torch.int32).reshape(1)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        flag = agreed[0].bool()
    return bool(flag) if read else flag


def describe_problem(flags: list[bool], term_names: list[str]) -> str | None:
    """What a step's flags (each term's loss finite, the total, the loss finite on every process,
    the gradients finite) say went wrong, None when nothing did."""
    terms, everywhere_ok, grads_ok = flags[:len(term_names) + 1], flags[-2], flags[-1]
    if not all(terms):
        bad = [name for name, ok in zip(term_names, terms) if not ok]
        return f"non-finite loss (terms: {', '.join(bad) or 'total'})"
    if not everywhere_ok:
        return "non-finite loss on another process"
    if not grads_ok:
        return "non-finite gradients"
    return None


#: Under fp16, a scale below this after a skipped step means the gradients are non-finite
#: without any scaling: a problem for ``train.on_nan``, not an overflow.
MIN_GRAD_SCALE = 1.0


@dataclass
class StepOutcome:
    #: The batch's total loss and each term's (detached); None when the step is known to have
    #: failed. Under a deferred check they are there either way: :attr:`made` says whether to count them.
    total: torch.Tensor | None = None
    values: list[torch.Tensor] = field(default_factory=list)
    #: A problem already known on the host (the eager path).
    known: str | None = None
    #: fp16: the gradient scaler found overflowed gradients, skipped the update and lowered its scale.
    scaler_skipped: bool = False
    #: The deferred check (see :func:`train_step`): a device tensor of the step's flags, read
    #: only when :attr:`problem` is asked for; None when the check was made on the host.
    flags: torch.Tensor | None = None
    term_names: list[str] = field(default_factory=list)

    @property
    def made(self) -> torch.Tensor | bool:
        """Whether the update was made (a device bool under the deferred check)."""
        return self.flags.all() if self.flags is not None else self.known is None

    @property
    def problem(self) -> str | None:
        """A non-finite loss or gradient (for ``train.on_nan``): the update was not made. Reading
        it waits for the device under the deferred check; the epoch loop reads many at once."""
        if self.flags is not None:
            return describe_problem(self.flags.tolist(), self.term_names)
        return self.known


def deferred_skip(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer | None:
    """The torch optimizer that can skip an update on the device (fused SGD, Adam, AdamW take a
    ``found_inf`` tensor, as the gradient scaler gives them), None when it cannot, or when its
    state is still empty: a fused first step skipped would leave its buffers uninitialised."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if not getattr(inner, "_step_supports_amp_scaling", False) or not inner.state:
        return None
    if not all(group.get("fused") for group in inner.param_groups):
        return None
    return inner


def train_step(accelerator: Accelerator, objective: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
               train: TrainSpec, weights: list[float], term_names: list[str], inputs: torch.Tensor, targets: Any,
               teach: StepTeacher, micro_batch: int | None, labelled: int | None = None) -> StepOutcome:
    """Forward, backward and update on one batch (``optimizer`` prepared by ``accelerator``);
    ``labelled``: see :func:`accumulate`.

    Without a gradient scaler, and with a fused optimizer past its first step, the step never
    waits for the device: whether the loss and the gradients are finite stays a device flag, the
    optimizer skips the update on the device when it is false (its ``found_inf``), and the
    outcome's :attr:`StepOutcome.problem` reads it when asked. The schedule then counts the batch
    whether or not its update was made. Otherwise (fp16's scaler, a first step) the check is read
    at once and a failed step is not counted."""
    scaler = accelerator.scaler
    inner = deferred_skip(optimizer) if scaler is None else None
    total, values, checked = accumulate(accelerator, objective, weights, term_names, inputs, targets,
                                        teach, micro_batch, labelled, eager=inner is None)
    if isinstance(checked, str):  # the eager path found a non-finite loss before its backward
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(known=checked)
    grads_finite, norm = torch.ones((), dtype=torch.bool, device=accelerator.device), None
    if train.grad_clip:
        # Accelerate unscales fp16 gradients first, so the clip applies to the true gradients.
        norm = accelerator.clip_grad_norm_(objective.parameters(), train.grad_clip)
    elif scaler is None:  # the gradients' norm (one read of them) tells whether any is inf or NaN
        grads = [p.grad for p in objective.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else None
    if scaler is None and norm is not None:
        grads_finite = torch.isfinite(norm)
    if inner is not None:
        flags = torch.cat([checked, everywhere(accelerator, checked.all(), read=False).reshape(1),
                           grads_finite.reshape(1)])
        inner.found_inf = (~flags.all()).float()
        try:
            optimizer.step()
        finally:
            del inner.found_inf
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        return StepOutcome(total, values, flags=flags, term_names=term_names)
    if scaler is None and not grads_finite:
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(known="non-finite gradients")
    optimizer.step()  # fp16: the scaler's step, skipped when the gradients overflowed
    optimizer.zero_grad(set_to_none=True)
    if getattr(optimizer, "step_was_skipped", False):
        if scaler.get_scale() < MIN_GRAD_SCALE:
            return StepOutcome(known=f"non-finite gradients (fp16: they overflow even with the gradient "
                                     f"scale down to {scaler.get_scale():.3g})")
        return StepOutcome(total, values, scaler_skipped=True)
    schedule.step()
    return StepOutcome(total, values)


#: Steps whose deferred checks (:attr:`StepOutcome.flags`) the epoch loop reads at once: one wait
#: for the device per this many steps, and one at the end of the epoch. A failed step's update
#: was skipped on the device already; only its report waits.
PROBLEM_READ_STEPS = 32


def read_deferred(pending: list[tuple[int, StepOutcome]]) -> list[tuple[int, str]]:
    """The failed steps among ``pending`` (step index, outcome) and what failed, read from the
    device in one go; ``pending`` is emptied."""
    if not pending:
        return []
    flags = torch.stack([done.flags for _, done in pending]).tolist()
    failed = [(step, describe_problem(f, done.term_names)) for (step, done), f in zip(pending, flags) if not all(f)]
    pending.clear()
    return failed


def on_problem(train: TrainSpec, stage: str, problem: str, epoch: int, step: int, checkpoints: Path) -> None:
    """``train.on_nan``: stop the run (the last good checkpoint stays) or let the batch be skipped."""
    if train.on_nan == "stop":
        raise TrainingError(
            f"{stage}: {problem} at epoch {epoch}, step {step + 1}; the last good checkpoint is in "
            f"{checkpoints}. Lower the learning rate or check the data, or set train.on_nan = \"skip\"."
        )
