"""The run's Accelerator: device placement, mixed precision, processes and trackers."""

from __future__ import annotations

from datetime import timedelta

from accelerate import DataLoaderConfiguration
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import InitProcessGroupKwargs

from kdengine.reporting.tracking import accelerator_options
from kdengine.train.precision import StagePrecisionAccelerator


#: How long a process waits for the others in a collective call. The main process builds a missing
#: teacher-output cache (one teacher pass per cached epoch) while the others wait at a barrier:
#: far longer than torch's default of 10 minutes (NCCL) or 30 (gloo), after which they would abort.
PROCESS_GROUP_TIMEOUT = timedelta(hours=12)


def make_accelerator(mixed_precision: str, log_with: list[str] | tuple = ()) -> StagePrecisionAccelerator:
    """An Accelerator for this run, in ``mixed_precision`` until a stage chooses its own
    (:meth:`StagePrecisionAccelerator.use_precision`).

    Accelerate keeps its state in a process-wide singleton; when a single process runs several
    recipes (notebooks, tests) with different precisions, that state is reset between runs.
    Under ``accelerate launch`` (several processes) the launcher's state is kept.
    """
    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    # split_batches: the recipe's batch_size is the global batch, whatever the number of processes.
    # log_with: experiment trackers (a missing tracker package stops the run here, before training).
    return StagePrecisionAccelerator(mixed_precision=mixed_precision,
                                     dataloader_config=DataLoaderConfiguration(split_batches=True),
                                     kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)],
                                     **accelerator_options(log_with))


def close_process_group() -> None:
    """Leave the process group this process joined, if any.

    Called once when a command ends. A gloo or NCCL group left open at interpreter exit tears
    down its worker threads in an arbitrary order, and the process may abort ("terminate called
    without an active exception") after its work is done and written, so the launcher reports a
    failure for a run that succeeded. Everyone waits first so no process leaves a peer mid-call.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
