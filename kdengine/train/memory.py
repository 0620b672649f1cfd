"""A memory budget for training: ``train.max_memory = "4GiB"``.

The recipe's batch stays the optimizer's batch; what changes is how many rows go through the
student (and an inline teacher) at once. The micro-batch is found by measurement on a real batch:
one forward and backward pass at two small sizes gives the fixed part (weights, data, libraries)
and the part that grows with the rows (activations); the largest micro-batch the budget allows is
then checked with a third measurement, and the batch is trained as that many micro-batches with
gradient accumulation (BatchNorm sees the micro-batches, as with any accumulation).

What is measured is the process's peak resident memory on CPU (the kernel's high-water mark,
reset before each measurement) and the allocator's peak on a GPU. Accelerate's
``find_executable_batch_size`` finds what fits a whole device by trying until it runs out of
memory; a budget below the device (a GPU shared with other jobs, a laptop that must stay usable)
needs the measurement, so both devices use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from accelerate.utils import slice_tensors
from torch import nn

from kdengine.errors import KDEngineError
from kdengine.io.state import rng_state, set_rng_state
from kdengine.recipe.units import format_size, parse_size
from kdengine.reporting.progress import console
from kdengine.teacher.base import StepTeacher
from kdengine.plugins.coupling import batch_coupled, coupling_note
from kdengine.train.step import accumulate

if TYPE_CHECKING:
    from kdengine.recipe import TrainSpec
    from kdengine.train.context import RunContext

def _trim_heap() -> None:
    """Give the C allocator's free memory back to the system (glibc), so that the resident set
    measures live memory only."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMeter:
    """Peak memory since the last :meth:`reset`: the process's resident set on CPU, the caching
    allocator's peak on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _trim_heap()  # freed memory the allocator keeps would otherwise count as in use
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError as exc:
            raise KDEngineError(
                "train.max_memory: measuring peak memory on CPU needs Linux (/proc/self/clear_refs); "
                f"it is not available here ({exc.strerror or exc}). Remove train.max_memory."
            ) from None

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise KDEngineError("train.max_memory: /proc/self/status has no VmHWM line")


@dataclass
class MicroBatchPlan:
    #: Rows per forward/backward pass (None: the whole batch at once).
    micro_batch: int | None
    #: Rows of one process's batch.
    batch: int
    #: Measured peaks: rows -> bytes.
    measured: dict[int, int]
    #: Fixed part and bytes per row of the fit, and the optimizer state added on top.
    fixed: float
    per_row: float
    extra: int
    budget: int
    #: With micro-batches: what sees each of them instead of the whole batch (loss terms, BatchNorm).
    coupled: list[str] = field(default_factory=list)

    @property
    def accumulation_steps(self) -> int:
        return 1 if self.micro_batch is None else math.ceil(self.batch / self.micro_batch)

    def describe(self) -> str:
        rows = self.micro_batch or self.batch
        head = (f"train.max_memory {format_size(self.budget)}: batch {self.batch} as "
                f"{self.accumulation_steps} x {rows} rows" if self.micro_batch else
                f"train.max_memory {format_size(self.budget)}: the whole batch of {self.batch} fits")
        text = (f"{head} (measured: fixed {format_size(self.fixed)}, {self.per_row / 2**20:.1f} MiB per row, "
                f"optimizer state {format_size(self.extra)}; predicted peak "
                f"{format_size(self.fixed + self.per_row * rows + self.extra)})")
        if self.coupled:
            text += f"; {coupling_note(self.coupled)}"
        return text


#: Share of the budget kept free for what one measured pass does not show: the optimizer step's
#: temporaries, evaluation, and the allocator's fragmentation over many steps.
HEADROOM = 0.06


def plan_micro_batch(measure: Callable[[int], int], batch: int, budget: int, extra: int) -> MicroBatchPlan:
    """The largest micro-batch whose measured peak (plus ``extra``: optimizer state, not yet
    allocated when measuring, and a ``HEADROOM`` share of the budget) stays within ``budget``."""
    full_budget, budget = budget, int(budget * (1 - HEADROOM))
    # Sizes far enough apart that the per-row part stands out of the allocator's noise.
    small = max(1, min(batch, max(2, batch // 8)))
    large = max(small + 1, min(batch, max(2 * small, batch // 4)))
    measured = {small: measure(small)}
    if large <= batch:
        measured[large] = measure(large)
        per_row = max((measured[large] - measured[small]) / (large - small), 1.0)
    else:  # a batch of one row
        per_row = float(measured[small])
    fixed = measured[small] - per_row * small
    room = budget - extra - fixed
    if room < per_row:
        raise KDEngineError(
            f"train.max_memory: {format_size(full_budget)} is below what training needs: about "
            f"{format_size(fixed + extra)} before any data plus {per_row / 2**20:.1f} MiB per row"
        )
    rows = min(batch, int(room // per_row))
    # Check the choice itself: activations do not always grow exactly linearly.
    while rows > small:
        measured[rows] = measure(rows)
        if measured[rows] + extra <= budget:
            break
        rows = max(small, int(rows * 0.8))
    return MicroBatchPlan(None if rows >= batch else rows, batch, measured, fixed, per_row, extra, full_budget)


def plan_memory(ctx: "RunContext", train: "TrainSpec", objective: nn.Module, weights: list[float],
                term_names: list[str], inputs: torch.Tensor, targets: Any, teach: StepTeacher) -> MicroBatchPlan:
    """The micro-batch that keeps training within ``train.max_memory``, measured on ``inputs``
    (the first batch) with the objective's state, gradients and random generators left as found."""
    accelerator = ctx.accelerator
    meter = PeakMeter(ctx.device)
    batch = inputs.shape[0] // accelerator.num_processes
    params = [p for p in objective.parameters() if p.requires_grad]
    slots = 1 if train.optimizer.name == "sgd" else 2
    extra = slots * sum(p.numel() * p.element_size() for p in params)

    def measure(rows: int) -> int:
        state = {k: v.detach().clone() for k, v in objective.state_dict().items()}
        rng = rng_state()
        window = slice(0, rows)
        meter.reset()
        # One pass as training makes it (a non-finite loss skips the backward, as in training).
        accumulate(accelerator, objective, weights, term_names, inputs[window], slice_tensors(targets, window),
                   teach, None)
        peak = meter.peak()
        objective.zero_grad(set_to_none=True)
        objective.load_state_dict(state)  # BatchNorm statistics moved by the measurement
        set_rng_state(rng)
        return peak

    budget = parse_size(train.max_memory)
    objective.train()
    memory_plan = plan_micro_batch(measure, batch, budget, extra)
    if accelerator.num_processes > 1:  # every process uses the smallest choice
        mine = torch.tensor([memory_plan.micro_batch or batch], device=ctx.device)
        memory_plan.micro_batch = int(accelerator.gather(mine).min())
        if memory_plan.micro_batch >= batch:
            memory_plan.micro_batch = None
    if memory_plan.micro_batch is not None:
        memory_plan.coupled = batch_coupled(objective.student, list(objective.terms), term_names)
    if ctx.progress and accelerator.is_main_process:
        console.print(memory_plan.describe())
    return memory_plan
