"""What a stage starts from, assembled in one place.

A stage's loss terms and their taps, its step layout (how many steps an epoch has and how many
rows each), the augmentation stream its batches are drawn with, and the transfer rows a taught
stage adds: the training loop, the teacher-output cache (which must see exactly the inputs the
student will train on), the "auto" loss weights, ``kdengine cache-teacher`` and the dry run all
read them from here, so that none of them can drift from the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch
from accelerate.utils import concatenate, slice_tensors
from torch import nn

from kdengine.errors import DataError, KDEngineError, located
from kdengine.plugins.components import LossTerm, ModelFactory
from kdengine.recipe import LossSpec, Recipe
from kdengine.runtime.tensors import prepare_inputs, to_device
from kdengine.teacher.replay import BatchAugmentStream
from kdengine.train.context import step_sizes
from kdengine.train.objective import build_loss_terms, tap_paths, term_keys

if TYPE_CHECKING:
    from kdengine.recipe.stages import StagePlan
    from kdengine.teacher.base import StepTeacher
    from kdengine.train.context import RunContext
    from kdengine.train.transfer import TransferRows


@dataclass(frozen=True)
class StageLosses:
    """A stage's loss terms as the recipe gives them (``taught``: with the terms that need a
    teacher), their keys (``loss[i]``-style names an error or a table uses) and the layers they tap."""

    specs: list[LossSpec]
    terms: list[LossTerm]
    weights: list[float | str]
    names: list[str]
    student_paths: list[str]
    teacher_paths: list[str]

    @classmethod
    def of(cls, recipe: Recipe, taught: bool) -> "StageLosses":
        specs, terms, weights = build_loss_terms(recipe, with_teacher=taught)
        student_paths, teacher_paths = tap_paths(terms)
        return cls(specs, terms, weights, term_keys(specs), student_paths, teacher_paths)


@dataclass
class StageSetup:
    """One stage's losses, step layout, augmentation stream and transfer rows (see the module
    docstring); ``assemble`` makes one and checks what would otherwise fail mid-stage."""

    ctx: "RunContext"
    plan: "StagePlan"
    losses: StageLosses
    #: Optimizer steps per epoch, and the labelled rows of each (the last may be short).
    steps: int
    sizes: list[int]
    augment: BatchAugmentStream
    #: The rows the teacher alone labels, after each step's labelled rows (taught stages only).
    transfer: "TransferRows | None"

    @classmethod
    def assemble(cls, ctx: "RunContext", plan: "StagePlan", taught: bool) -> "StageSetup":
        train, rows, processes = plan.train, len(ctx.train_set), ctx.accelerator.num_processes
        if rows == 0:
            raise DataError(f"{ctx.recipe.source}: data: the train split is empty")
        sizes = step_sizes(rows, train)
        transfer = ctx.transfer if taught else None  # the baselines and the teacher never see it
        if transfer is not None and transfer.rows % processes:
            raise KDEngineError(f"{ctx.recipe.source}: data.transfer.ratio: {transfer.rows} transfer rows per step "
                                f"do not split evenly over {processes} processes")
        augment = BatchAugmentStream(ctx.provider.batch_augment, ctx.seed, ctx.device, ctx.provider.transfer_augment)
        # scratch-transfer (train.baseline_transfer): the teacher labels the transfer rows, and
        # only the label terms train, as in the scratch baseline
        losses = StageLosses.of(ctx.recipe, taught and not plan.teacher_labels)
        return cls(ctx, plan, losses, len(sizes), sizes, augment, transfer)

    @property
    def channels_last(self) -> bool:
        return self.plan.train.channels_last

    def train_loader(self, epoch: int | None = None):
        """The stage's training batches (the run's seeded order; at ``epoch``'s order if given)."""
        loader = self.ctx.train_loader(self.plan.train)
        if epoch is not None:
            loader.sampler.set_epoch(epoch)
        return loader

    def build_model(self, factory: ModelFactory) -> nn.Module:
        """The stage's model, built under the run's seed: a student starts from the same weights
        whether it is distilled or not."""
        torch.manual_seed(self.ctx.seed)
        with located(self.ctx.recipe.source, self.plan.where):
            return factory.build(self.ctx.info)

    def first_batch(self, loader) -> tuple[torch.Tensor, Any]:
        """The loader's first batch on the device, un-augmented: it sets up the loss terms."""
        inputs, targets = to_device(next(iter(loader)), self.ctx.device)
        return prepare_inputs(inputs, self.channels_last), targets

    def step_inputs(self, inputs: torch.Tensor, targets: Any, epoch: int, step: int, process: int
                    ) -> tuple[torch.Tensor, Any, int | None]:
        """One process's rows of a step as it trains on them: augmented under that process's
        draws, the transfer rows it adds after them, in the stage's memory format. Returns the
        inputs, the targets, and how many leading rows are labelled (None: all of them)."""
        inputs, targets = self.augment(inputs, targets, epoch=epoch, step=step, process=process)
        labelled = None
        if self.transfer is not None:
            extra = self.transfer.batch(epoch, step, process, self.ctx.accelerator.num_processes)
            extra = self.augment.transfer(extra.to(inputs.device), epoch=epoch, step=step, process=process)
            labelled, inputs = inputs.shape[0], torch.cat([inputs, extra])
        return prepare_inputs(inputs, self.channels_last), targets, labelled

    def with_teacher_labels(self, inputs: torch.Tensor, targets: Any, labelled: int | None,
                            teach: "StepTeacher") -> tuple[Any, int | None, "StepTeacher"]:
        """Under ``plan.teacher_labels``: the step's targets with the teacher's hard labels of its
        transfer rows after the labelled rows' own (:meth:`DatasetProvider.teacher_labels`), every
        row then labelled and nothing left to teach. Otherwise what it is given."""
        if not self.plan.teacher_labels or labelled is None:
            return targets, labelled, teach
        with torch.no_grad():
            output, _ = teach(inputs, slice(0, inputs.shape[0]))
            extra = self.ctx.provider.teacher_labels(slice_tensors(output, slice(labelled, None)), targets)
        return concatenate([targets, extra]), None, lambda x, rows: (None, {})

    def shares(self, batch: Any, epoch: int, step: int) -> list[tuple[torch.Tensor, Any, int | None]]:
        """A whole step's batch (every process's rows, as one loader on one process yields it)
        split the way the processes train on it, each share through :meth:`step_inputs`."""
        batch = to_device(batch, self.ctx.device)
        processes = self.ctx.accelerator.num_processes
        if processes == 1:
            return [self.step_inputs(*batch, epoch, step, 0)]
        share = self.sizes[step] // processes
        return [self.step_inputs(*slice_tensors(batch, slice(p * share, (p + 1) * share)), epoch, step, p)
                for p in range(processes)]

    def teacher_inputs(self, epoch: int) -> Iterator[torch.Tensor]:
        """Every step's inputs of ``epoch``, all processes' rows in process order: what the
        teacher-output cache stores the teacher's outputs for."""
        for step, batch in enumerate(self.train_loader(epoch)):
            if step >= self.steps:
                break
            yield torch.cat([inputs for inputs, _, _ in self.shares(batch, epoch, step)])
