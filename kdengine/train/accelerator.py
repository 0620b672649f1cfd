"""The run's Accelerator: device placement, mixed precision, processes and trackers."""

from __future__ import annotations

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState, GradientState, PartialState

from kdengine.errors import KDEngineError
from kdengine.reporting.tracking import accelerator_options


def make_accelerator(mixed_precision: str, log_with: list[str] | tuple = ()) -> Accelerator:
    """An Accelerator for this run.

    Accelerate keeps its state in a process-wide singleton; when a single process runs several
    recipes (notebooks, tests) with different precisions, that state is reset between runs.
    Under ``accelerate launch`` (several processes) the launcher's state is kept.
    """
    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise KDEngineError(
            "train.mixed_precision: fp16 needs a GPU; use 'bf16' (fast on CPUs with AVX-512 BF16) or 'no'"
        )
    # split_batches: the recipe's batch_size is the global batch, whatever the number of processes.
    # log_with: experiment trackers (a missing tracker package stops the run here, before training).
    return Accelerator(mixed_precision=mixed_precision,
                       dataloader_config=DataLoaderConfiguration(split_batches=True),
                       **accelerator_options(log_with))
