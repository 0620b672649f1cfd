"""One stage: train one model (the teacher, a scratch student or a distilled student) epoch by
epoch, evaluate it after each epoch, keep its best and last weights, and return its record.

The epoch loop reads like a plain PyTorch loop with Accelerate's verbs; what it does not show is
one call away: the teacher's outputs (:mod:`kdengine.teacher.sources`), the step
(:mod:`kdengine.train.step`), evaluation (:mod:`kdengine.train.evaluate`) and what is kept at the
end of an epoch (:class:`EpochKeeper`).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from itertools import islice

import torch
from accelerate.utils import gather_object, set_seed
from torch import nn

from kdengine.errors import TrainingError, located
from kdengine.io.state import TrainingState, rng_state, set_rng_state
from kdengine.plugins.components import ModelFactory
from kdengine.recipe import monitored_metric
from kdengine.recipe.shares import AUTO
from kdengine.recipe.stages import StagePlan
from kdengine.reporting.progress import StageProgress
from kdengine.io.results import EpochRecord, StageResult
from kdengine.teacher.precision import InferenceSetting
from kdengine.teacher.sources import TeacherSource
from kdengine.train.balance import balance_stage, first_batches
from kdengine.train.context import RunContext
from kdengine.train.checkpointing import apply_activation_checkpointing
from kdengine.runtime.compiling import compile_in_place
from kdengine.train.evaluate import is_better
from kdengine.train.freeze import BackboneFreeze
from kdengine.train.memory import plan_memory
from kdengine.train.models import count_parameters, describe, ready_to_teach
from kdengine.train.objective import set_up_objective, warmed_up
from kdengine.train.optim import Schedule, build_optimizer
from kdengine.train.setup import StageSetup
from kdengine.train.step import PROBLEM_READ_STEPS, on_problem, read_deferred, train_step


class EpochKeeper:
    """What is kept after each epoch: the record, the best epoch (by the monitored metric), the
    best and last weights, the training state a resume starts from, and the trackers' line."""

    def __init__(self, ctx: RunContext, plan: StagePlan, result: StageResult, best_value: float | None):
        self.ctx, self.plan, self.result, self.best_value = ctx, plan, result, best_value
        self.monitor, self.higher_is_better = monitored_metric(ctx.recipe, plan.train)
        self.started = time.perf_counter() - result.seconds

    def keep(self, record: EpochRecord, objective: nn.Module, optimizer, schedule: Schedule) -> None:
        ctx, result, stage = self.ctx, self.result, self.plan.name
        accelerator = ctx.accelerator
        result.history.append(record)
        improved = False
        if record.metrics:  # an evaluated epoch (train.eval_every)
            result.last = record.metrics
            if record.epoch in self.plan.train.report_epochs:
                result.at_epochs[record.epoch] = record.metrics
            improved = is_better(record.metrics[self.monitor], self.best_value, self.higher_is_better)
        if improved:
            self.best_value, result.best, result.best_epoch = record.metrics[self.monitor], record.metrics, record.epoch
        result.scaler_skipped += record.scaler_skipped
        ctx.folder.log_epoch(stage, record)
        rngs = None
        if accelerator.num_processes > 1:  # every process's generators, for each to resume with its own
            rngs = gather_object([rng_state()])
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(objective)
            ctx.folder.save_checkpoint(stage, unwrapped.student, best=improved)
            result.seconds = time.perf_counter() - self.started
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            TrainingState(record.epoch, unwrapped.state_dict(), optimizer.state_dict(), schedule.state_dict(),
                          rng_state(), self.best_value, result, scaler, rngs).save(ctx.folder.state_path(stage))
            ctx.tracking.log_epoch(stage, record)  # after the state: a resume never logs it twice


def score_test(ctx: RunContext, plan: StagePlan, factory: ModelFactory, result: StageResult, last: nn.Module) -> None:
    """The stage's one look at the test split, at the end: its best weights (chosen on the monitor
    split) and its last. Under ``train.monitor_split = "test"`` that look was taken every epoch."""
    if ctx.recipe.train.monitor_split == "test":
        result.test_best, result.test_last = result.best, result.last
        return
    if result.best_epoch is None:
        monitor = monitored_metric(ctx.recipe, plan.train)[0]
        raise TrainingError(f"{ctx.recipe.source}: {plan.name}: the monitored {monitor} was not finite in any "
                            f"evaluated epoch, so there are no best weights to test; the last weights are in "
                            f"{ctx.folder.checkpoint_path(plan.name, 'last')} of the run folder")
    loader = ctx.accelerator.prepare_data_loader(ctx.eval_loader(ctx.test_set, plan.train))
    result.test_last = ctx.scorer(last, loader, plan.train.channels_last)
    if result.best_epoch == result.history[-1].epoch:
        result.test_best = result.test_last
        return
    best = factory.load(ctx.folder.path / ctx.folder.checkpoint_path(plan.name, "best"), ctx.info)
    result.test_best = ctx.scorer(ready_to_teach(best, ctx.accelerator, plan.train.channels_last), loader,
                                  plan.train.channels_last)


def transfer_note(setup: StageSetup) -> str | None:
    """What the results say about the stage's transfer rows (None: it has none)."""
    if setup.transfer is None:
        return None
    targets = ("the teacher's hard labels, for the label terms" if setup.plan.teacher_labels
               else "the teacher's outputs, for the distillation terms alone")
    return f"{setup.transfer.rows} rows per step from '{setup.transfer.name}', labelled by {targets}"


def train_stage(ctx: RunContext, plan: StagePlan, factory: ModelFactory, source: TeacherSource,
                resume: TrainingState | None = None) -> StageResult:
    """Train the stage's model, taught by ``source``, and return its record; its best and last
    weights are in the run folder. ``resume`` continues from the training state written at the end
    of the stage's last finished epoch."""
    accelerator, train = ctx.accelerator, plan.train
    accelerator.use_precision(train.mixed_precision)  # before the optimizer takes its gradient scaler
    setup = StageSetup.assemble(ctx, plan, taught=source.teaches)
    set_seed(ctx.seed)
    model = setup.build_model(factory)
    n_params = count_parameters(model)
    apply_activation_checkpointing(model, train, ctx.recipe.source, describe(plan.spec))
    freeze = BackboneFreeze(model, plan.freeze_backbone_epochs, f"{ctx.recipe.source}: {plan.where}",
                            accelerator.num_processes)
    freeze.hold_statistics()  # the set-up passes below must not move frozen batch-norm statistics either
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    losses = setup.losses
    specs, terms, weights, term_names = losses.specs, losses.terms, losses.weights, losses.names
    train_loader, monitor_loader = setup.train_loader(), ctx.eval_loader(ctx.monitor_set, train)
    steps = setup.steps

    inputs, targets = setup.first_batch(train_loader)
    if resume is not None and resume.result.teacher_inference:  # a resumed stage keeps its teacher's setting
        source.setting = InferenceSetting(**resume.result.teacher_inference)
    source.start(setup, inputs)
    first = source.first_step()
    with accelerator.autocast(), located(ctx.recipe.source, "loss"):
        objective = set_up_objective(model, terms, inputs, targets, lambda x: first(x, slice(0, len(x))),
                                     device=ctx.device, names=term_names)
    micro_batch, coupled = None, []
    if train.max_memory is not None and resume is not None:
        # a resumed stage goes on with the micro-batch it was measured with: one measured now (on
        # a busier device, say) would change the gradients mid-stage and contradict the record
        micro_batch, coupled = resume.result.micro_batch, list(resume.result.micro_batch_coupled)
    elif train.max_memory is not None:
        provisional = [1.0 if w == AUTO else w for w in weights]  # weights do not change the memory
        memory_plan = plan_memory(ctx, train, objective, provisional, term_names, inputs, targets, first)
        micro_batch, coupled = memory_plan.micro_batch, memory_plan.coupled
    balanced = balance_stage(ctx, plan, objective, specs, weights, term_names,
                             lambda count: first_batches(setup, source, count), steps, micro_batch,
                             recorded=resume.result.loss_weights if resume is not None else None)
    if balanced is not None:
        weights = balanced.weights
    if train.compile:  # after the set-up passes above, which run once and need no compiled graph
        compile_in_place(model, ctx.recipe.source, f"{plan.name}'s {describe(plan.spec)}")

    optimizer = build_optimizer(objective, train.optimizer, fuse=train.mixed_precision != "fp16")
    monitor, higher_is_better = monitored_metric(ctx.recipe, train)
    schedule = Schedule(optimizer, train.scheduler, train.epochs, steps, higher_is_better)
    result = StageResult(stage=plan.name, model=describe(plan.spec), params=n_params, teacher=plan.teacher,
                         generation=plan.generation, micro_batch=micro_batch, micro_batch_coupled=coupled,
                         teacher_inference=asdict(source.setting) if source.setting else None,
                         loss_weights=balanced.record() if balanced is not None else {},
                         precision=train.mixed_precision, transfer=transfer_note(setup))
    best_value, first_epoch = None, 1
    if resume is not None:
        objective.load_state_dict(resume.objective)
        optimizer.load_state_dict(resume.optimizer)
        schedule.load_state_dict(resume.schedule)
        set_rng_state(resume.rng_for(accelerator.process_index, accelerator.num_processes))
        if accelerator.scaler is not None and resume.scaler:
            accelerator.scaler.load_state_dict(resume.scaler)
        result, best_value, first_epoch = resume.result, resume.best_value, resume.epoch + 1
    objective, optimizer, train_loader, monitor_loader = accelerator.prepare(objective, optimizer, train_loader,
                                                                             monitor_loader)
    student = accelerator.unwrap_model(objective).student
    keeper = EpochKeeper(ctx, plan, result, best_value)
    checkpoints = ctx.folder.path / "checkpoints" / plan.name

    with StageProgress(plan.name, train.epochs, steps, enabled=ctx.progress and accelerator.is_main_process,
                       done=(first_epoch - 1) * steps) as bar:
        for epoch in range(first_epoch, train.epochs + 1):
            data_epoch = source.data_epoch(epoch)  # another than ``epoch`` only under teacher.cache_views
            train_loader.set_epoch(data_epoch)
            objective.train()
            freeze.start_epoch(epoch)
            epoch_start = time.perf_counter()
            sums = torch.zeros(len(terms) + 1, device=ctx.device)
            seen = skipped = scaler_skipped = 0
            pending = []  # steps whose finite check is still on the device (train.step)

            def settle() -> int:
                """Read the pending checks; a failed step is train.on_nan's (stop, or skipped)."""
                failed = read_deferred(pending)
                for failed_step, problem in failed:
                    on_problem(train, plan.name, problem, epoch, failed_step, checkpoints)
                return len(failed)

            epoch_weights = warmed_up(weights, specs, epoch)
            for step, batch in enumerate(islice(train_loader, steps)):
                # augmented as the cache saw it; transfer rows, which the teacher alone labels, after
                inputs, targets, labelled = setup.step_inputs(*batch, data_epoch, step, accelerator.process_index)
                teach = source.step(data_epoch, step, accelerator.process_index)
                targets, labelled, teach = setup.with_teacher_labels(inputs, targets, labelled, teach)
                done = train_step(accelerator, objective, optimizer, schedule, train, epoch_weights, term_names,
                                  inputs, targets, teach, micro_batch, labelled=labelled)
                if done.flags is None and done.known is not None:
                    on_problem(train, plan.name, done.known, epoch, step, checkpoints)
                    skipped += 1
                    continue
                scaler_skipped += done.scaler_skipped  # fp16 overflow: no update, a lower scale, go on
                losses_now = torch.stack([done.total] + done.values)
                if done.flags is not None:  # a failed step adds nothing, known without waiting
                    losses_now = torch.where(done.made, losses_now, torch.zeros_like(losses_now))
                    pending.append((step, done))
                sums += losses_now
                seen += 1
                bar.advance(done.total)  # read off the device only now and then (reporting.progress)
                if len(pending) >= PROBLEM_READ_STEPS:
                    failed = settle()
                    skipped, seen = skipped + failed, seen - failed
            failed = settle()  # the epoch's last checks, before its losses are read
            skipped, seen = skipped + failed, seen - failed
            means = (sums / max(seen, 1)).tolist()  # the epoch's one read of the losses (waits for the device)
            train_seconds = time.perf_counter() - epoch_start
            metrics, eval_seconds = {}, 0.0
            if epoch % train.eval_every == 0 or epoch == train.epochs:
                metrics = ctx.scorer(student, monitor_loader, train.channels_last)
                eval_seconds = time.perf_counter() - epoch_start - train_seconds
                schedule.end_epoch(metrics[monitor])
            bar.end_epoch(epoch, monitor, metrics.get(monitor))
            record = EpochRecord(epoch=epoch, losses=dict(zip(["total"] + term_names, means)), metrics=metrics,
                                 lr=schedule.lr, seconds=time.perf_counter() - epoch_start,
                                 train_seconds=train_seconds, eval_seconds=eval_seconds, skipped_batches=skipped,
                                 scaler_skipped=scaler_skipped)
            keeper.keep(record, objective, optimizer, schedule)
    accelerator.wait_for_everyone()
    result.seconds = time.perf_counter() - keeper.started
    result.checkpoint = ctx.folder.checkpoint_path(plan.name, "best")
    score_test(ctx, plan, factory, result, student)
    source.close()
    accelerator.unwrap_model(objective).close()
    accelerator.free_memory()
    return result
