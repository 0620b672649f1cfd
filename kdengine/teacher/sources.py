"""Where a stage's teacher outputs come from.

Every stage gets one :class:`TeacherSource`, and the epoch loop asks it the same question at every
step, whatever the teacher is: "the teacher's outputs for this batch". The answer comes from

- :class:`NoTeacher`: nothing (the teacher's own stage, and the scratch baselines);
- :class:`InlineTeacher`: a frozen model run on the batch, in its own precision (a stage trained
  earlier in the run, a checkpoint, or any model a factory delivers);
- :class:`CachedTeacher`: the teacher-output cache, built first where it is missing.

Which weights teach (a trained stage's best or last, a checkpoint) is decided by the run
(:mod:`kdengine.train.run`); a new way of getting a teacher's outputs is a new class here.
"""

from __future__ import annotations

from torch import nn

from kdengine.teacher.base import StepTeacher, TeacherSource
from kdengine.teacher.cached import CachedTeacher
from kdengine.teacher.precision import TeacherRunner, agree, teacher_runner

__all__ = ["CachedTeacher", "InlineTeacher", "NoTeacher", "StepTeacher", "TeacherSource"]


class NoTeacher(TeacherSource):
    teaches = False

    def step(self, epoch: int, step: int, process: int | None) -> StepTeacher:
        return lambda inputs, rows: (None, {})


class InlineTeacher(TeacherSource):
    """A frozen model run on every batch."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.runner: TeacherRunner | None = None

    def start(self, setup, first_inputs) -> None:
        ctx = setup.ctx
        self.runner = teacher_runner(ctx, setup.plan.train, self.model, setup.losses.teacher_paths, first_inputs,
                                     self.setting)
        self.runner.use(agree(ctx.accelerator, self.runner.setting))
        self.setting = self.runner.setting

    def step(self, epoch: int, step: int, process: int | None) -> StepTeacher:
        return lambda inputs, rows: self.runner(inputs)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
