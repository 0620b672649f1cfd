"""A progress bar per stage (rich): loss, monitored metric, throughput and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class StageProgress:
    def __init__(self, stage: str, epochs: int, steps_per_epoch: int, enabled: bool = True, done: int = 0):
        self.stage = stage
        self.epochs = epochs
        self.enabled = enabled
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

    def advance(self, loss: float) -> None:
        self._progress.update(self._task, advance=1, loss=f"{loss:.4f}")

    def end_epoch(self, epoch: int, monitor: str, value: float) -> None:
        self._progress.update(
            self._task, description=f"{self.stage} {min(epoch + 1, self.epochs)}/{self.epochs}",
            metric=f"{monitor} {value:.4f}",
        )
        if self.enabled and not console.is_terminal:
            console.print(f"{self.stage} epoch {epoch}/{self.epochs}: {monitor} {value:.4f}")
