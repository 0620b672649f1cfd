"""A progress bar per stage (rich): loss, monitored metric, throughput and ETA.

The loss shown is the last step's. Reading a loss off the device waits for the device to finish
the step, so the bar reads one every ``LOSS_EVERY`` steps (and at the end of an epoch), and never
when it is not shown; the epoch's mean losses are summed on the device and read once per epoch
by the loop.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)

#: Steps between two readings of the loss for the bar.
LOSS_EVERY = 10


class StageProgress:
    def __init__(self, stage: str, epochs: int, steps_per_epoch: int, enabled: bool = True, done: int = 0):
        self.stage = stage
        self.epochs = epochs
        self.enabled = enabled
        self._loss: torch.Tensor | float | None = None  # the last step's, not read yet
        self._unread = 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[metric]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(
            f"{stage} {done // max(steps_per_epoch, 1) + 1}/{epochs}", total=epochs * steps_per_epoch,
            completed=done, loss="-", metric=""
        )

    def __enter__(self) -> "StageProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self, loss: torch.Tensor | float) -> None:
        """One step done, with its loss (a tensor on the device, read only when shown)."""
        if not self.enabled:
            return
        self._loss, self._unread = loss, self._unread + 1
        if self._unread >= LOSS_EVERY:
            self._show_loss(advance=1)
        else:
            self._progress.update(self._task, advance=1)

    def _show_loss(self, advance: int = 0) -> None:
        fields = {"loss": f"{float(self._loss):.4f}"} if self._loss is not None else {}
        self._progress.update(self._task, advance=advance, **fields)
        self._loss, self._unread = None, 0

    def end_epoch(self, epoch: int, monitor: str, value: float | None) -> None:
        """The epoch is over; ``value``: the monitored metric, None in an epoch not evaluated."""
        if self.enabled:
            self._show_loss()
        fields = {"metric": f"{monitor} {value:.4f}"} if value is not None else {}
        self._progress.update(self._task, description=f"{self.stage} {min(epoch + 1, self.epochs)}/{self.epochs}",
                              **fields)
        if self.enabled and value is not None and not console.is_terminal:
            console.print(f"{self.stage} epoch {epoch}/{self.epochs}: {monitor} {value:.4f}")
