"""Each stage's training precision: ``train.mixed_precision``, per stage (``[teacher] train`` and
``[[generation]] train`` may change it).

Accelerate fixes one precision per process: its state is a process-wide singleton, and
``prepare`` wraps a model's forward in that precision's autocast. A recipe may train its teacher
in bf16 and its students in float32, so the run's Accelerator is made in float32 and
:class:`StagePrecisionAccelerator` switches its precision at the start of each stage. The verbs
keep their meaning: ``autocast()`` casts to the stage's type, ``backward()`` scales the loss and
``prepare(optimizer)`` gives Accelerate's optimizer wrapper the stage's gradient scaler under
fp16, and ``clip_grad_norm_()`` unscales the gradients before it measures and clips them.

Under fp16 a fresh ``torch.amp.GradScaler`` belongs to each stage. A step whose scaled gradients
overflow is the scaler's business, as PyTorch intends: the wrapper skips the update and lowers
the scale (``optimizer.step_was_skipped``), and the loop counts it. The scaler works on a CPU
too (float16 kernels there are slow, so a CPU run is told to prefer bf16).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer

#: The autocast type of each ``train.mixed_precision`` (``"no"``: float32, no autocast).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionWarning(UserWarning):
    """A precision that trains correctly but slowly here (fp16 on a CPU)."""


class StagePrecisionAccelerator(Accelerator):
    """Accelerate's Accelerator with the precision chosen per stage (:meth:`use_precision`)."""

    def __init__(self, *args, mixed_precision: str = "no", **kwargs):
        # Accelerate's own precision stays float32: its autocast wrapper around prepared models
        # would override the stage's.
        super().__init__(*args, mixed_precision="no", **kwargs)
        self._warned = False
        self.use_precision(mixed_precision)

    def use_precision(self, precision: str) -> None:
        """Train in ``precision`` ("no", "bf16" or "fp16") from now on. Call it before the stage's
        optimizer is prepared: the optimizer wrapper keeps the scaler it was prepared with."""
        if precision not in ("no", *AUTOCAST_DTYPES):
            raise ValueError(f"unknown precision {precision!r}")
        if precision == "fp16" and self.device.type == "cpu" and not self._warned:
            self._warned = True
            warnings.warn("train.mixed_precision: fp16 trains correctly on a CPU but slowly (float16 "
                          "kernels are emulated on most CPUs); bf16 or 'no' trains faster here",
                          PrecisionWarning, stacklevel=2)
        self._stage_precision = precision
        # Accelerate's GradScalerKwargs (kwargs_handlers), when given, set the scaler's options.
        options = self.scaler_handler.to_kwargs() if self.scaler_handler is not None else {}
        self.scaler = torch.amp.GradScaler(self.device.type, **options) if precision == "fp16" else None

    @property
    def mixed_precision(self) -> str:
        return self._stage_precision

    @contextmanager
    def autocast(self, autocast_handler=None):
        dtype = AUTOCAST_DTYPES.get(self._stage_precision)
        handler = autocast_handler or self.autocast_handler
        options = handler.to_kwargs() if handler is not None else {}
        enabled = dtype is not None and options.pop("enabled", True)
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=enabled, **options):
            yield

    def unscale_gradients(self, optimizer=None) -> None:
        """Divide the gradients by the scale (fp16), once per step, before they are measured."""
        if self.scaler is None:
            return
        optimizers = self._optimizers if optimizer is None else optimizer
        for opt in optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]:
            while isinstance(opt, AcceleratedOptimizer):
                opt = opt.optimizer  # the wrapper steps the inner optimizer: the scaler keys on it
            self.scaler.unscale_(opt)
