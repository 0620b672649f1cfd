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

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from accelerate.utils import slice_tensors
from torch import nn

from kdengine.io.fingerprint import file_sha256
from kdengine.io.state import rng_state, set_rng_state
from kdengine.teacher.cache import tensor_digest
from kdengine.teacher.cached import default_cache_root, open_teacher_cache
from kdengine.teacher.precision import InferenceSetting, TeacherRunner, agree, teacher_runner

if TYPE_CHECKING:
    from kdengine.recipe import ComponentSpec
    from kdengine.recipe.stages import StagePlan
    from kdengine.train.context import RunContext

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

    def start(self, ctx: "RunContext", plan: "StagePlan", feature_paths: list[str], steps: int,
              first_inputs: torch.Tensor) -> None:
        """Get ready before the stage's first step (``first_inputs``: the first training batch)."""

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


class NoTeacher(TeacherSource):
    teaches = False

    def step(self, epoch: int, step: int, process: int | None) -> StepTeacher:
        return lambda inputs, rows: (None, {})


class InlineTeacher(TeacherSource):
    """A frozen model run on every batch."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.runner: TeacherRunner | None = None

    def start(self, ctx, plan, feature_paths, steps, first_inputs) -> None:
        self.runner = teacher_runner(ctx, plan.train, self.model, feature_paths, first_inputs, self.setting)
        self.runner.use(agree(ctx.accelerator, self.runner.setting))
        self.setting = self.runner.setting

    def step(self, epoch: int, step: int, process: int | None) -> StepTeacher:
        return lambda inputs, rows: self.runner(inputs)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


class CachedTeacher(TeacherSource):
    """Outputs read from the teacher-output cache; the teacher itself (``load()``) is only loaded
    when the cache is missing epochs, or to key a teacher that has no weights file."""

    def __init__(self, weights_file: Path | None, load: Callable[[], nn.Module], kind: str, spec: "ComponentSpec"):
        #: The teacher's weights file (a trained stage's, a checkpoint), or None for a teacher as
        #: its factory delivers it.
        self.weights_file = Path(weights_file) if weights_file is not None else None
        #: The component that builds the teaching model ("teacher", or "student" for a generation
        #: that teaches the next) and its recipe entry: both are part of the cache's key.
        self.kind, self.spec = kind, spec
        self._load = load
        self._model: nn.Module | None = None
        self.cache = None
        #: ``teacher.cache_views``: how many epochs of batches the cache holds (None: every epoch)
        self.views: int | None = None

    def weights_key(self) -> str:
        """The cache key's part for the teacher's weights: another teacher is another cache. A
        file is hashed as it is; a teacher without one is built and its state dict hashed."""
        if self.weights_file is not None:
            return file_sha256(self.weights_file)
        if self._model is None:
            self._model = self._load()  # kept for load(): a missing cache needs it next
        return tensor_digest(self._model)

    def load(self) -> nn.Module:
        model, self._model = self._model, None
        return model if model is not None else self._load()

    def start(self, ctx, plan, feature_paths, steps, first_inputs) -> None:
        self.ctx, self.feature_paths = ctx, feature_paths
        self.views = ctx.recipe.teacher.cache_views
        rng = rng_state()  # building the cache (a teacher's init, ...) must not move the stage's generators
        self.cache = open_teacher_cache(ctx, plan, self, feature_paths, steps,
                                        default_cache_root(ctx.recipe, ctx.folder.path.parent))
        self._model = None  # students train without the teacher in memory
        set_rng_state(rng)

    def data_epoch(self, epoch: int) -> int:
        return (epoch - 1) % self.views + 1 if self.views else epoch

    def step(self, epoch: int, step: int, process: int | None) -> StepTeacher:
        # ``epoch`` is a data epoch (``data_epoch``): the one whose batches the cache holds
        outputs = self.cache.lookup(epoch, step, process, self.feature_paths, self.ctx.device)
        return lambda inputs, rows: slice_tensors(outputs, rows)
