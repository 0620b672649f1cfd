"""The stage progress bar (kdengine.reporting.progress): the loss is read off the device only now
and then, never when the bar is off, and the last step's loss is what it shows."""

from __future__ import annotations

from kdengine.reporting import progress
from kdengine.reporting.progress import LOSS_EVERY, StageProgress


class DeviceLoss:
    """A loss whose reading (``float``) is counted: each one would wait for the device."""

    reads = 0

    def __init__(self, value: float):
        self.value = value

    def __float__(self) -> float:
        DeviceLoss.reads += 1
        return self.value


def shown_loss(bar: StageProgress) -> str:
    return bar._progress.tasks[0].fields["loss"]


def test_the_loss_is_read_every_few_steps_and_at_the_end_of_the_epoch(monkeypatch):
    monkeypatch.setattr(progress.console, "print", lambda *a, **k: None)
    DeviceLoss.reads = 0
    bar = StageProgress("distilled", epochs=2, steps_per_epoch=2 * LOSS_EVERY + 3)
    for step in range(2 * LOSS_EVERY + 3):
        bar.advance(DeviceLoss(float(step)))
    assert DeviceLoss.reads == 2 and shown_loss(bar) == f"{2 * LOSS_EVERY - 1:.4f}"
    bar.end_epoch(1, "top1", 0.5)
    assert DeviceLoss.reads == 3 and shown_loss(bar) == f"{2 * LOSS_EVERY + 2:.4f}"  # the last step's
    assert bar._progress.tasks[0].completed == 2 * LOSS_EVERY + 3
    bar.end_epoch(2, "top1", None)  # an epoch train.eval_every skips: nothing to read, metric kept
    assert DeviceLoss.reads == 3 and bar._progress.tasks[0].fields["metric"] == "top1 0.5000"


def test_a_bar_that_is_off_never_reads_the_loss():
    DeviceLoss.reads = 0
    bar = StageProgress("distilled", epochs=1, steps_per_epoch=30, enabled=False)
    for _ in range(30):
        bar.advance(DeviceLoss(1.0))
    bar.end_epoch(1, "top1", 0.5)
    assert DeviceLoss.reads == 0
