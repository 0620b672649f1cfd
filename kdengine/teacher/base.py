"""What every source of a stage's teacher outputs answers: "the teacher's outputs for this batch"
(the sources themselves are in :mod:`kdengine.teacher.sources`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from kdengine.teacher.precision import InferenceSetting

if TYPE_CHECKING:
    from kdengine.train.setup import StageSetup

#: ``teach(inputs, rows) -> (output, {path: feature})`` for one step; ``rows`` is the slice of the
#: step's batch that ``inputs`` holds (micro-batches under ``train.max_memory``).
StepTeacher = Callable[[torch.Tensor, slice], tuple[Any, dict[str, torch.Tensor]]]


class TeacherSource:
    """The teacher's outputs for every step of one stage."""

    #: Whether the stage is taught (its loss terms include those that need a teacher).
    teaches = True
    #: The precision and memory format the teacher runs in: chosen in ``start`` (measured under
    #: ``teacher.precision = "auto"``), or set before it to keep a resumed stage's choice.
    setting: InferenceSetting | None = None

    def start(self, setup: "StageSetup", first_inputs: torch.Tensor) -> None:
        """Get ready before the stage's first step: ``setup`` is the stage's assembly (its run,
        plan, the teacher layers its loss terms tap, its step layout and input stream),
        ``first_inputs`` its first training batch."""

    def first_step(self) -> StepTeacher:
        """The outputs for the first training batch (before augmentation), which sets up the
        loss terms and the memory plan."""
        return self.step(1, 0, None)

    def step(self, epoch: int, step: int, process: int | None) -> StepTeacher:
        raise NotImplementedError

    def data_epoch(self, epoch: int) -> int:
        """The epoch whose data order and augmentation draws the stage trains on at ``epoch``."""
        return epoch

    def close(self) -> None:
        """Release hooks and memory at the end of the stage."""
