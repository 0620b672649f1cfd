"""One run of a recipe with one seed: every stage in order, in one run folder::

    runs/<name>-<timestamp>/
        recipe.json          the resolved recipe
        environment.json     package versions, device, data and weight hashes
        metrics.jsonl        one line per stage and epoch: every loss term, metric and the lr
        tracking/            experiment trackers' files (train.log_with: TensorBoard, MLflow, ...)
        checkpoints/<stage>/{best,last}.safetensors
        results.json, results.md, curves.png, samples.png (when the task draws one)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from accelerate.utils import set_seed
from torch import nn

from kdengine.errors import KDEngineError, located
from kdengine.io.rundir import RunFolder
from kdengine.io.state import TrainingState
from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.components import ModelFactory
from kdengine.recipe import Recipe, monitored_metric
from kdengine.recipe.stages import StagePlan, plan_stages
from kdengine.reporting.report import finish_run_report
from kdengine.io.results import SKIPPED_LISTED, Results, StageResult
from kdengine.reporting.tracking import RunTracking
from kdengine.reporting.progress import console
from kdengine.teacher.given import given_teacher
from kdengine.teacher.scores import TeacherScores, read_scores, scores_memo, write_scores
from kdengine.teacher.sources import CachedTeacher, InlineTeacher, NoTeacher, TeacherSource
from kdengine.train.accelerator import make_accelerator
from kdengine.train.checkpointing import checkpointed_modules
from kdengine.train.context import RunContext, open_dataset, open_splits, warn_skipped
from kdengine.train.evaluate import Scorer, build_metrics
from kdengine.train.models import count_parameters, describe, ready_to_teach
from kdengine.train.stage import train_stage
from kdengine.train.transfer import open_transfer


class StageWeights:
    """The weights of every finished stage (and of a teacher the run does not train: a checkpoint,
    or the model as its factory delivers it): which file holds them, the model loaded from it, and
    the teacher source they make for a later stage.

    Models are kept in memory once loaded, unless the teacher-output cache is on: then students
    train without their teacher in memory, and each model is loaded only when needed.
    """

    def __init__(self, ctx: RunContext, factories: dict[str, ModelFactory], given: nn.Module | None):
        self.ctx, self.factories = ctx, factories
        #: The teacher is given, not trained in this run.
        self.given = given is not None
        self.checkpoint = Path(ctx.recipe.teacher.checkpoint) if ctx.recipe.teacher.checkpoint is not None else None
        self.keep = not ctx.recipe.teacher.cache
        plans = plan_stages(ctx.recipe)
        self.trains = {plan.name: plan.train for plan in plans}
        #: What builds each stage's model: the teaching model's part of a teacher cache's key.
        self.builders = {plan.name: (plan.role, plan.spec) for plan in plans}
        self.loaded: dict[str, nn.Module] = {}
        if given is not None and self.keep:
            self.loaded["teacher"] = self._ready(given, "teacher")

    def _ready(self, model: nn.Module, stage: str) -> nn.Module:
        return ready_to_teach(model, self.ctx.accelerator, self.trains[stage].channels_last)

    def file(self, stage: str, which: str) -> Path | None:
        """The file of a stage's weights; None for a teacher as its factory delivers it."""
        if stage == "teacher" and self.given:
            return self.checkpoint
        return self.ctx.folder.path / self.ctx.folder.checkpoint_path(stage, which)

    def model(self, stage: str, which: str = "best") -> nn.Module:
        if which == "best" and stage in self.loaded:
            return self.loaded[stage]
        if stage == "teacher" and self.given:
            model = given_teacher(self.ctx.recipe, self.factories[stage], self.ctx.info)
        else:
            model = self.factories[stage].load(self.file(stage, which), self.ctx.info)
        model = self._ready(model, stage)
        if which == "best" and self.keep:
            self.loaded[stage] = model
        return model

    def source_for(self, plan: StagePlan) -> TeacherSource:
        """What teaches ``plan``: nothing, the teaching stage's weights inline, or their cache."""
        if plan.teacher is None:
            return NoTeacher()
        which = "best" if plan.teacher == "teacher" and self.given else plan.weights
        if self.ctx.recipe.teacher.cache:
            return CachedTeacher(self.file(plan.teacher, which), lambda: self.model(plan.teacher, which),
                                 *self.builders[plan.teacher])
        return InlineTeacher(self.model(plan.teacher, which))

    def all_best(self, plans: list[StagePlan]) -> dict[str, nn.Module]:
        return {plan.name: self.model(plan.name) for plan in plans}


def evaluate_given_teacher(ctx: RunContext, plan: StagePlan, load: Callable[[], nn.Module]) -> StageResult:
    """A teacher the run does not train (a checkpoint, or as its factory delivers it) is
    evaluated once on the monitor split and once on test; with the teacher-output cache, once per
    data and evaluation settings across runs (:mod:`kdengine.teacher.scores`)."""
    ctx.accelerator.use_precision(plan.train.mixed_precision)
    recipe, checkpoint = ctx.recipe, plan.spec.checkpoint
    teacher = None if checkpoint is not None else load()  # a teacher without a file is keyed by its weights
    memo = scores_memo(ctx, plan, teacher)
    stored = read_scores(memo) if memo is not None else None
    if stored is not None:
        monitored, tested, params = stored.monitored, stored.test, stored.params
        if ctx.progress and ctx.accelerator.is_main_process:
            console.print(f"teacher: val and test scores read from {memo} (an earlier run evaluated these weights)")
    else:
        teacher = teacher if teacher is not None else load()

        def score(data):
            return ctx.scorer(teacher, ctx.accelerator.prepare_data_loader(ctx.eval_loader(data, plan.train)),
                              plan.train.channels_last)

        monitored = score(ctx.monitor_set)
        tested = monitored if recipe.train.monitor_split == "test" else score(ctx.test_set)
        params = count_parameters(teacher)
        if memo is not None and ctx.accelerator.is_main_process:
            write_scores(memo, TeacherScores(monitored, tested, params), describe(plan.spec))
    return StageResult(stage="teacher", model=describe(plan.spec), params=params, trained=False,
                       origin="checkpoint" if checkpoint is not None else "pretrained",
                       best=monitored, last=monitored, test_best=tested, test_last=tested,
                       checkpoint=str(checkpoint) if checkpoint is not None else None, generation=plan.generation)


def check_batch_split(recipe: Recipe, plans: list, trained: list, processes: int) -> None:
    """Each process takes an equal share of every batch (the recipe's batch sizes are global), so
    each batch size a stage uses must be a multiple of the process count: checked before the run
    folder exists, with the field to change."""
    if processes == 1:
        return
    for plan in plans:
        keys = ("batch_size", "eval_batch_size") if plan in trained else ("eval_batch_size",)
        for key in keys:
            if key == "eval_batch_size" and plan.train.eval_batch_size is None:
                key = "batch_size"  # evaluation then runs at the training batch size
            value = getattr(plan.train, key)
            if value % processes:
                field = f"train.{key}" if value == getattr(recipe.train, key) else f"{plan.where}.train.{key}"
                raise KDEngineError(f"{recipe.source}: {field}: {value} does not split evenly over {processes} "
                                    f"processes (each takes an equal share of a batch); make it a multiple of "
                                    f"{processes}")


def run_one(recipe: Recipe, seed: int, *, progress: bool = True, output_dir: Path | None = None,
            folder_name: str | None = None, resume_dir: Path | None = None,
            shared_teacher: StageResult | None = None) -> Results:
    """Run every stage of a recipe with one seed and return its results (also written to the run
    folder). With ``resume_dir``, finished stages are reused and an interrupted one continues from
    its last finished epoch. ``shared_teacher``: the teacher stage's record from the run that
    trained the teacher (whose weights are ``teacher.checkpoint``), reported instead of scoring
    the same weights again."""
    started = time.perf_counter()
    recipe = with_seed(recipe, seed)  # the run folder's recipe records the seed actually used
    accelerator = make_accelerator(recipe.train.mixed_precision, recipe.train.log_with)
    catalog = get_catalog()
    set_seed(seed)

    provider, info = open_dataset(recipe)
    plans = plan_stages(recipe)
    factories = {plan.name: catalog.get(plan.role, plan.spec.name)(plan.spec.params) for plan in plans}
    given = given_teacher(recipe, factories["teacher"], info)
    train_set, monitor_set, test_set = open_splits(recipe, provider)
    transfer = open_transfer(recipe, provider, seed)
    skipped = provider.skipped_samples()
    if skipped and accelerator.is_main_process:
        warn_skipped(recipe, skipped)
    # Every architecture is built once before the run folder exists: a bad model parameter (or
    # activation checkpointing it cannot do) stops the run now, not after hours of teacher training.
    trained = [p for p in plans if p.name != "teacher" or given is None]
    for described, plan in {describe(p.spec): p for p in trained}.items():
        with located(recipe.source, plan.where):
            model = factories[plan.name].build(info)
        for stage in (p for p in trained if describe(p.spec) == described):
            checkpointed_modules(model, stage.train, recipe.source, described)

    check_batch_split(recipe, plans, trained, accelerator.num_processes)

    finished: dict[str, StageResult] = {}
    if resume_dir is not None:
        folder = RunFolder.reopen(Path(resume_dir), accelerator, provider=provider)
        if (folder.path / "results.json").is_file():
            previous = Results.load(folder.path / "results.json")
            finished = {s.stage: s for s in previous.stages}
            started -= previous.seconds
    else:
        folder = RunFolder.create(recipe, accelerator, output_dir, folder_name, provider=provider)
    monitor, higher_is_better = monitored_metric(recipe)
    with located(recipe.source, "metric"):
        scorer = Scorer(accelerator, provider, build_metrics(recipe, info))
    ctx = RunContext(recipe, seed, accelerator, provider, info, train_set, monitor_set, test_set, folder, progress,
                     scorer, transfer=transfer)
    ctx.tracking = RunTracking.start(accelerator, recipe, folder, resumed=resume_dir is not None)

    results = Results(name=recipe.run.name, run_dir=str(folder.path), seed=seed, monitor=monitor,
                      higher_is_better=higher_is_better, monitor_split=recipe.train.monitor_split,
                      skipped_samples=len(skipped), skipped_files=skipped[:SKIPPED_LISTED])
    weights = StageWeights(ctx, factories, given)
    del given  # StageWeights holds it when it is kept in memory
    for plan in plans:
        if plan.name in finished:
            result = finished[plan.name]
        elif plan.name == "teacher" and shared_teacher is not None:
            result = shared_teacher
        elif plan.name == "teacher" and weights.given:
            result = evaluate_given_teacher(ctx, plan, lambda: weights.model("teacher"))
        else:
            state = None
            if resume_dir is not None:
                state_file = folder.state_path(plan.name)
                state = TrainingState.load(state_file) if state_file.is_file() else None
                folder.forget_epochs_after(plan.name, state.epoch if state else 0)
            result = train_stage(ctx, plan, factories[plan.name], weights.source_for(plan), resume=state)
            if plan.role == "teacher" and factories[plan.name].starts_pretrained():
                result.origin = "fine-tuned"
        if weights.keep:
            weights.model(plan.name)
        accelerator.free_memory()
        results.stages.append(result)
        if accelerator.is_main_process:
            results.save(folder.path / "results.json")  # a crash later keeps the finished stages

    results.seconds = time.perf_counter() - started
    results.complete = True
    if accelerator.is_main_process:
        results.save(folder.path / "results.json")
        finish_run_report(folder.path, results, provider, weights.all_best(plans))
    ctx.tracking.finish()
    accelerator.wait_for_everyone()
    return results


def with_seed(recipe: Recipe, seed: int) -> Recipe:
    if recipe.run.seed == seed and recipe.run.seeds is None:
        return recipe
    updated = recipe.model_copy(update={"run": recipe.run.model_copy(update={"seed": seed, "seeds": None})})
    updated._source = recipe.source
    return updated
