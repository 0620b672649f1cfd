"""The distillation loop.

``run(recipe)`` trains (or loads) the teacher, optionally trains the student from scratch as a
baseline, then trains the same student distilled from the frozen teacher, and writes a run folder::

    runs/<name>-<timestamp>/
        recipe.json          the resolved recipe
        environment.json     package versions, device, data and weight hashes
        metrics.jsonl        one line per stage and epoch: every loss term, metric and the lr
        tracking/            experiment trackers' files (train.log_with: TensorBoard, MLflow, ...)
        checkpoints/<stage>/{best,last}.safetensors
        results.json, results.md, curves.png, samples.png (when the task draws one)
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import set_seed, slice_tensors
from torch import nn
from torch.utils.data import DataLoader

from kdengine.cache import Layout, TeacherCache
from kdengine.catalog import get_catalog
from kdengine.checkpoint import load_weights
from kdengine.components import DataInfo, DatasetProvider, LossContext, LossTerm, ModelFactory
from kdengine.errors import CheckpointError, DataError, DataWarning, KDEngineError, TrainingError, located
from kdengine.features import FeatureTaps
from kdengine.inference import TeacherRunner, candidates, choose
from kdengine.memory import MicroBatchPlan, PeakMeter, parse_size, plan_micro_batch
from kdengine.optim import Schedule, build_optimizer
from kdengine.progress import StageProgress, console
from kdengine.recipe import ComponentSpec, LossSpec, Recipe, TrainSpec, load_recipe, monitored_metric
from kdengine.results import SKIPPED_LISTED, EpochRecord, Results, StageResult
from kdengine.rundir import RunFolder, file_sha256
from kdengine.stages import StagePlan, plan_stages
from kdengine.replay import BatchAugmentStream, EpochSampler, SeededItems, check_replayable
from kdengine.state import TrainingState, rng_state, set_rng_state
from kdengine.tracking import RunTracking, accelerator_options

if TYPE_CHECKING:
    from kdengine.seeds import SeedSummary


def describe(spec: ComponentSpec) -> str:
    """``name(key=value, ...)``: how a model appears in tables."""
    if not spec.params:
        return spec.name
    args = ", ".join(f"{k}={v}" for k, v in spec.params.items())
    return f"{spec.name}({args})"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_accelerator(mixed_precision: str, log_with: list[str] | tuple = ()) -> Accelerator:
    """An Accelerator for this run.

    Accelerate keeps its state in a process-wide singleton; when a single process runs several
    recipes (notebooks, tests) with different precisions, that state is reset between runs.
    Under ``accelerate launch`` (several processes) the launcher's state is kept.
    """
    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise KDEngineError(
            "train.mixed_precision: fp16 needs a GPU; use 'bf16' (fast on CPUs with AVX-512 BF16) or 'no'"
        )
    # split_batches: the recipe's batch_size is the global batch, whatever the number of processes.
    # log_with: experiment trackers (a missing tracker package stops the run here, before training).
    return Accelerator(mixed_precision=mixed_precision,
                       dataloader_config=DataLoaderConfiguration(split_batches=True),
                       **accelerator_options(log_with))


# ---------------------------------------------------------------------------------------------
# building blocks shared with the dry run (kdengine validate)


def build_loss_terms(recipe: Recipe, with_teacher: bool) -> tuple[list[LossSpec], list[LossTerm], list[float]]:
    """The loss terms of a stage and their weights.

    Stages without a teacher keep only the terms that do not need one, with their weights
    renormalised to sum to 1 (for ``0.9 * KD + 0.1 * CE`` the baseline trains on ``1.0 * CE``).
    """
    catalog = get_catalog()
    specs, terms = [], []
    for spec in recipe.loss:
        cls = catalog.get("loss", spec.name)
        if cls.needs_teacher and not with_teacher:
            continue
        specs.append(spec)
        terms.append(cls(spec.params))
    weights = [spec.weight for spec in specs]
    if not with_teacher:
        total = sum(weights)
        if total <= 0:
            raise KDEngineError(
                f"{recipe.source}: loss: the terms that do not need the teacher have zero total weight"
            )
        weights = [w / total for w in weights]
    return specs, terms, weights


class StudentObjective(nn.Module):
    """The student and its loss terms as one module, so DDP sees every trainable parameter
    (including the adapters a feature loss owns) inside a single forward pass."""

    def __init__(self, student: nn.Module, terms: list[LossTerm], student_paths: list[str]):
        super().__init__()
        self.student = student
        self.terms = nn.ModuleList(terms)
        self.taps = FeatureTaps(student, student_paths, role="student") if student_paths else None

    def context(self, inputs, targets, teacher_out, teacher_features) -> LossContext:
        output = self.student(inputs)
        return LossContext(
            inputs=inputs,
            targets=targets,
            student=output,
            teacher=teacher_out,
            student_features=dict(self.taps.features) if self.taps else {},
            teacher_features=teacher_features,
        )

    def forward(self, inputs, targets, teacher_out=None, teacher_features=None):
        ctx = self.context(inputs, targets, teacher_out, teacher_features or {})
        return ctx.student, [term(ctx) for term in self.terms]


def teacher_forward(runner: TeacherRunner | None, inputs: torch.Tensor):
    """The frozen teacher's output and tapped features for a batch (None and {} without one)."""
    if runner is None:
        return None, {}
    return runner(inputs)


def teacher_runner(ctx: RunContext, train: TrainSpec, model: nn.Module, feature_paths: list[str],
                   sample: torch.Tensor) -> TeacherRunner:
    """The teacher ready to teach: its taps, and the precision and memory format of
    ``[teacher] precision / channels_last`` (measured on ``sample`` when ``precision = "auto"``)."""
    spec = ctx.recipe.teacher
    taps = FeatureTaps(model, feature_paths, role="teacher") if feature_paths else None
    options = candidates(spec.precision, spec.channels_last, train.mixed_precision, train.channels_last, ctx.device)
    runner = TeacherRunner(model, taps, options[0])
    timings = choose(runner, options, sample)
    if timings and ctx.progress and ctx.accelerator.is_main_process:
        measured = ", ".join(f"{option}: {seconds * 1e3:.0f} ms" for option, seconds in timings.items())
        console.print(f"teacher inference: {runner.setting} (fastest of {measured})")
    return runner


def tap_paths(terms: list[LossTerm]) -> tuple[list[str], list[str]]:
    student = list(dict.fromkeys(p for t in terms for p in t.student_taps()))
    teacher = list(dict.fromkeys(p for t in terms for p in t.teacher_taps()))
    return student, teacher


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def as_float(outputs: Any) -> Any:
    """Model outputs in float32 for metrics (bf16 outputs lose digits), also inside lists/tuples:
    whole images of different sizes are evaluated as lists."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(as_float(o) for o in outputs)
    return outputs


def prepare_inputs(inputs: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# one run


@dataclass
class RunContext:
    """What every stage of one run shares."""

    recipe: Recipe
    seed: int
    accelerator: Accelerator
    provider: DatasetProvider
    info: DataInfo
    train_set: Any
    eval_set: Any
    folder: RunFolder
    progress: bool
    metric_objects: list = field(default_factory=list)
    tracking: RunTracking = field(default_factory=RunTracking)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def loaders(self, train: TrainSpec) -> tuple[DataLoader, DataLoader]:
        collate = self.provider.collate_fn()
        # Items are loaded under the seed of their (epoch, index) key: augmentation is replayable.
        train_loader = DataLoader(
            SeededItems(self.train_set, self.seed), batch_size=train.batch_size,
            sampler=EpochSampler(len(self.train_set), self.seed),
            drop_last=len(self.train_set) > train.batch_size, num_workers=train.num_workers,
            collate_fn=collate, persistent_workers=train.num_workers > 0,
        )
        eval_loader = DataLoader(
            self.eval_set, batch_size=train.eval_batch_size or train.batch_size, shuffle=False,
            num_workers=train.num_workers, collate_fn=collate,
        )
        return train_loader, eval_loader


def build_metrics(recipe: Recipe, info: DataInfo) -> list[tuple[ComponentSpec, Any]]:
    catalog = get_catalog()
    out = []
    for spec in recipe.metric:
        component = catalog.get("metric", spec.name)(spec.params)
        metric = component.build(info)
        # Outputs are gathered across processes before update, so every process already holds
        # the whole evaluation split: a second sync inside torchmetrics would double-count.
        metric.sync_on_compute = False
        out.append((spec, metric))
    return out


def evaluate(ctx: RunContext, model: nn.Module, loader: DataLoader, channels_last: bool) -> dict[str, float]:
    model.eval()
    for _, metric in ctx.metric_objects:
        metric.reset()
    # Only the model runs under autocast: a dataset that builds its inputs in the main process
    # (e.g. degrading an HR image with a convolution) must not get reduced-precision tensors.
    with torch.inference_mode():
        for inputs, targets in loader:
            inputs = prepare_inputs(inputs, channels_last)
            with ctx.accelerator.autocast():
                outputs = ctx.provider.predict(model, inputs)
            outputs, targets = ctx.accelerator.gather_for_metrics((outputs, targets))
            outputs = as_float(outputs)
            for _, metric in ctx.metric_objects:
                metric.update(outputs, targets)
    values: dict[str, float] = {}
    for spec, metric in ctx.metric_objects:
        result = metric.compute()
        if isinstance(result, dict):
            values.update({k: float(v) for k, v in result.items()})
        else:
            values[spec.name] = float(result)
    return values


def is_better(value: float, best: float | None, higher: bool) -> bool:
    if best is None:
        return True
    return value > best if higher else value < best


@dataclass
class TeacherSource:
    """The weights that teach a stage, loaded only when needed (the teacher-output cache)."""

    stage: str
    weights_file: Path
    load: Callable[[], nn.Module]


def default_cache_root(recipe: Recipe, output_dir: Path) -> Path:
    return Path(recipe.teacher.cache_dir) if recipe.teacher.cache_dir is not None else output_dir / "teacher-cache"


def open_teacher_cache(ctx: RunContext, plan: StagePlan, source: TeacherSource, feature_paths: list[str],
                       steps: int, root: Path) -> TeacherCache:
    """The stage's teacher-output cache, with every epoch the stage trains present (the main
    process builds what is missing, drawing the student's data and augmentation stream)."""
    recipe, train, accelerator = ctx.recipe, plan.train, ctx.accelerator
    processes = accelerator.num_processes
    rows = len(ctx.train_set)
    sizes = [min(train.batch_size, rows - s * train.batch_size) for s in range(steps)]
    if processes > 1 and sizes[-1] != train.batch_size:
        raise KDEngineError(
            f"{recipe.source}: teacher.cache: the train split ({rows} rows) is smaller than one batch "
            f"({train.batch_size}); Accelerate pads such a batch across {processes} processes, which the cache "
            "does not replay: use a smaller batch_size or one process"
        )
    if any(size % processes for size in sizes):
        raise KDEngineError(
            f"{recipe.source}: train.batch_size: {train.batch_size} (and the last batch, {sizes[-1]}) must "
            f"divide evenly over {processes} processes for the teacher cache"
        )
    fingerprint = getattr(ctx.provider, "fingerprint", None)
    parts = {
        "teacher_weights": file_sha256(source.weights_file),
        "data": recipe.data.model_dump(mode="json"),
        "data_fingerprint": fingerprint() if callable(fingerprint) else None,
        "train_rows": rows,
        "seed": ctx.seed,
        "batch_size": train.batch_size,
        "num_processes": processes,
        "mixed_precision": train.mixed_precision,
        "channels_last": train.channels_last,
        "features": feature_paths,
        "teacher_inference": [recipe.teacher.precision, recipe.teacher.channels_last],
        "group_rows": recipe.teacher.cache_batch_size or train.batch_size,
    }
    layout = Layout(tuple(sizes), processes)
    augment = BatchAugmentStream(ctx.provider.batch_augment, ctx.seed, ctx.device)

    def batches(epoch: int):
        loader = ctx.loaders(train)[0]
        loader.sampler.set_epoch(epoch)
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            batch = to_device(batch, ctx.device)
            share = sizes[step] // processes
            pieces = []
            for process in range(processes):  # each process augments its own share
                piece = slice_tensors(batch, slice(process * share, (process + 1) * share)) if processes > 1 else batch
                inputs, _ = augment(*piece, epoch=epoch, step=step, process=process)
                pieces.append(prepare_inputs(inputs, train.channels_last))
            yield pieces[0] if processes == 1 else torch.cat(pieces)

    def teacher():
        loader = ctx.loaders(train)[0]
        loader.sampler.set_epoch(1)
        problem = check_replayable(lambda: to_device(next(iter(loader)), ctx.device), augment)
        if problem is not None:
            raise KDEngineError(f"{recipe.source}: teacher.cache: dataset '{recipe.data.name}': {problem}")
        model = source.load()
        runner = teacher_runner(ctx, train, model, feature_paths, next(batches(1)))

        def forward(inputs):
            with accelerator.autocast():
                return teacher_forward(runner, inputs)
        return forward

    cache = None
    if accelerator.is_main_process:
        with located(recipe.source, "teacher.cache"):
            cache = TeacherCache.open(root, parts, layout, recipe.teacher.cache_dtype)
            stats = cache.ensure(train.epochs, batches, teacher, feature_paths)
        if stats["built_epochs"] and ctx.progress:
            console.print(f"{plan.name}: teacher cache {cache.path} built ({stats['built_epochs']} epochs, "
                          f"{cache.size_bytes() / 2**20:.1f} MiB, {stats['seconds']:.1f} s)")
    accelerator.wait_for_everyone()
    if cache is None:
        cache = TeacherCache.open(root, parts, layout, recipe.teacher.cache_dtype)
    return cache


def accumulate(accelerator: Accelerator, objective: nn.Module, weights: list[float], term_names: list[str],
               inputs: torch.Tensor, targets: Any, teach: Callable, micro_batch: int | None):
    """Forward and backward one batch, as micro-batches of ``micro_batch`` rows with gradient
    accumulation when given (each micro-batch's loss weighted by its share of the rows, so the
    gradient is the batch's). ``teach(inputs, rows)`` gives the teacher's outputs for a slice.
    Returns the batch's total loss and each term's (detached), and a problem (non-finite loss)."""
    rows = inputs.shape[0]
    if micro_batch is None or micro_batch >= rows:
        bounds = [slice(0, rows)]
    else:
        bounds = [slice(a, min(a + micro_batch, rows)) for a in range(0, rows, micro_batch)]
    total_sum, value_sums = 0.0, [0.0] * len(weights)
    for i, rows_slice in enumerate(bounds):
        whole = len(bounds) == 1
        x = inputs if whole else inputs[rows_slice]
        y = targets if whole else slice_tensors(targets, rows_slice)
        with accelerator.autocast():
            t_out, t_feats = teach(x, rows_slice)
            _, values = objective(x, y, t_out, t_feats)
            total = sum(w * v for w, v in zip(weights, values))
        if not torch.isfinite(total):
            bad = [n for n, v in zip(term_names, values) if not torch.isfinite(v)]
            return None, None, f"non-finite loss (terms: {', '.join(bad) or 'total'})"
        share = 1.0 if whole else (rows_slice.stop - rows_slice.start) / rows
        # Gradients of all but the last micro-batch stay local (no DDP all-reduce until the last).
        sync = contextlib.nullcontext() if i == len(bounds) - 1 else accelerator.no_sync(objective)
        with sync:
            accelerator.backward(total if whole else total * share)
        total_sum = total_sum + total.detach().float() * share
        value_sums = [s + v.detach().float() * share for s, v in zip(value_sums, values)]
    return total_sum, value_sums, None


def plan_memory(ctx: RunContext, train: TrainSpec, objective: nn.Module, weights: list[float],
                term_names: list[str], inputs: torch.Tensor, targets: Any, teach: Callable) -> MicroBatchPlan:
    """The micro-batch that keeps training within ``train.max_memory``, measured on ``inputs``
    (the first batch) with the objective's state, gradients and random generators left as found."""
    accelerator = ctx.accelerator
    meter = PeakMeter(ctx.device)
    batch = inputs.shape[0] // accelerator.num_processes
    params = [p for p in objective.parameters() if p.requires_grad]
    slots = 1 if train.optimizer.name == "sgd" else 2
    extra = slots * sum(p.numel() * p.element_size() for p in params)

    def measure(rows: int) -> int:
        state = {k: v.detach().clone() for k, v in objective.state_dict().items()}
        rng = rng_state()
        window = slice(0, rows)
        meter.reset()
        # One pass as training makes it (a non-finite loss skips the backward, as in training).
        accumulate(accelerator, objective, weights, term_names, inputs[window], slice_tensors(targets, window),
                   teach, None)
        peak = meter.peak()
        objective.zero_grad(set_to_none=True)
        objective.load_state_dict(state)  # BatchNorm statistics moved by the measurement
        set_rng_state(rng)
        return peak

    budget = parse_size(train.max_memory)
    objective.train()
    memory_plan = plan_micro_batch(measure, batch, budget, extra)
    if accelerator.num_processes > 1:  # every process uses the smallest choice
        mine = torch.tensor([memory_plan.micro_batch or batch], device=ctx.device)
        memory_plan.micro_batch = int(accelerator.gather(mine).min())
        if memory_plan.micro_batch >= batch:
            memory_plan.micro_batch = None
    if ctx.progress and accelerator.is_main_process:
        console.print(memory_plan.describe())
    return memory_plan


def train_stage(ctx: RunContext, plan: StagePlan, factory: ModelFactory, teacher: nn.Module | None,
                resume: TrainingState | None = None, cached: TeacherSource | None = None) -> StageResult:
    """Train one model (the teacher, a scratch student or a distilled student) and return its
    record; its best and last weights are in the run folder. ``resume`` continues a stage from
    the training state written at the end of its last finished epoch. With ``cached`` (instead of
    ``teacher``), the teacher's outputs come from the teacher-output cache, built first where
    missing."""
    accelerator = ctx.accelerator
    stage, spec, train = plan.name, plan.spec, plan.train
    set_seed(ctx.seed)  # a student starts from the same weights whether distilled or not
    with located(ctx.recipe.source, plan.where):
        model = factory.build(ctx.info)
    n_params = count_parameters(model)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    specs, terms, weights = build_loss_terms(ctx.recipe, with_teacher=teacher is not None or cached is not None)
    term_names = [s.name for s in specs]
    student_paths, teacher_paths = tap_paths(terms)
    objective = StudentObjective(model, terms, student_paths).to(ctx.device)
    train_loader, eval_loader = ctx.loaders(train)
    if len(train_loader) == 0:
        raise DataError(f"{ctx.recipe.source}: data: the train split is empty")
    steps = len(train_loader) if train.max_steps_per_epoch is None else min(len(train_loader), train.max_steps_per_epoch)
    augment = BatchAugmentStream(ctx.provider.batch_augment, ctx.seed, ctx.device)
    cache = None
    if cached is not None:
        rng = rng_state()  # building the cache (a teacher's init, ...) must not move the stage's generators
        cache = open_teacher_cache(ctx, plan, cached, teacher_paths, steps,
                                   default_cache_root(ctx.recipe, ctx.folder.path.parent))
        set_rng_state(rng)

    # Loss terms that own adapters size them on one real batch before the optimizer exists.
    inputs, targets = to_device(next(iter(train_loader)), ctx.device)
    inputs = prepare_inputs(inputs, train.channels_last)
    runner = teacher_runner(ctx, train, teacher, teacher_paths, inputs) if teacher is not None else None
    with torch.no_grad(), accelerator.autocast():
        if cache is not None:  # the first cached step has the probe's shapes
            t_out, t_feats = cache.lookup(1, 0, None, teacher_paths, ctx.device)
        else:
            t_out, t_feats = teacher_forward(runner, inputs)
        probe = objective.context(inputs, targets, t_out, t_feats)
        for term in terms:
            term.setup(probe)
    objective.to(ctx.device)

    micro_batch = None
    if train.max_memory is not None:
        memory_plan = plan_memory(ctx, train, objective, weights, term_names, inputs, targets,
                                  lambda x, rows: (slice_tensors(t_out, rows), slice_tensors(t_feats, rows))
                                  if cache is not None else teacher_forward(runner, x))
        micro_batch = memory_plan.micro_batch

    optimizer = build_optimizer(objective.parameters(), train.optimizer)
    monitor, higher_is_better = monitored_metric(ctx.recipe, train)
    schedule = Schedule(optimizer, train.scheduler, train.epochs, steps, higher_is_better)
    result = StageResult(stage=stage, model=describe(spec), params=n_params, teacher=plan.teacher,
                         generation=plan.generation, micro_batch=micro_batch)
    best_value: float | None = None
    first_epoch = 1
    if resume is not None:
        objective.load_state_dict(resume.objective)
        optimizer.load_state_dict(resume.optimizer)
        schedule.load_state_dict(resume.schedule)
        set_rng_state(resume.rng)
        result, best_value, first_epoch = resume.result, resume.best_value, resume.epoch + 1
    objective, optimizer, train_loader, eval_loader = accelerator.prepare(
        objective, optimizer, train_loader, eval_loader
    )
    student = accelerator.unwrap_model(objective).student

    started = time.perf_counter() - result.seconds
    with StageProgress(stage, train.epochs, steps, enabled=ctx.progress and accelerator.is_main_process,
                       done=(first_epoch - 1) * steps) as bar:
        for epoch in range(first_epoch, train.epochs + 1):
            train_loader.set_epoch(epoch)
            objective.train()
            epoch_start = time.perf_counter()
            sums = torch.zeros(len(terms) + 1, device=ctx.device)
            seen = skipped = 0
            for step, batch in enumerate(train_loader):
                if step >= steps:
                    break
                inputs, targets = augment(*batch, epoch=epoch, step=step, process=accelerator.process_index)
                inputs = prepare_inputs(inputs, train.channels_last)
                if cache is not None:
                    cached_out = cache.lookup(epoch, step, accelerator.process_index, teacher_paths, ctx.device)
                    teach = lambda x, rows, cached_out=cached_out: slice_tensors(cached_out, rows)
                else:
                    teach = lambda x, rows: teacher_forward(runner, x)
                total, values, problem = accumulate(accelerator, objective, weights, term_names, inputs, targets,
                                                    teach, micro_batch)
                if problem is None:
                    # The gradient norm (clipped or not) tells whether any gradient is inf or NaN.
                    norm = accelerator.clip_grad_norm_(objective.parameters(), train.grad_clip or float("inf"))
                    if norm is not None and not torch.isfinite(norm):
                        problem = "non-finite gradients"
                if problem is not None:
                    if train.on_nan == "stop":
                        raise TrainingError(
                            f"{stage}: {problem} at epoch {epoch}, step {step + 1}; the last good "
                            f"checkpoint is in {ctx.folder.path / 'checkpoints' / stage}. Lower the "
                            "learning rate or check the data, or set train.on_nan = \"skip\"."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                sums += torch.stack([total] + values)
                seen += 1
                bar.advance(float(total.detach()))
            means = (sums / max(seen, 1)).tolist()
            losses = {"total": means[0], **{n: m for n, m in zip(term_names, means[1:])}}
            metrics = evaluate(ctx, student, eval_loader, train.channels_last)
            monitored = metrics[monitor]
            schedule.end_epoch(monitored)
            record = EpochRecord(
                epoch=epoch, losses=losses, metrics=metrics, lr=schedule.lr,
                seconds=time.perf_counter() - epoch_start, skipped_batches=skipped,
            )
            result.history.append(record)
            result.last = metrics
            if epoch in train.report_epochs:
                result.at_epochs[epoch] = metrics
            improved = is_better(monitored, best_value, higher_is_better)
            if improved:
                best_value, result.best, result.best_epoch = monitored, metrics, epoch
            ctx.folder.log_epoch(stage, record)
            if accelerator.is_main_process:
                ctx.folder.save_checkpoint(stage, student, best=improved)
                result.seconds = time.perf_counter() - started
                TrainingState(epoch, accelerator.unwrap_model(objective).state_dict(), optimizer.state_dict(),
                              schedule.state_dict(), rng_state(), best_value, result,
                              ).save(ctx.folder.state_path(stage))
                ctx.tracking.log_epoch(stage, record)  # after the state: a resume never logs it twice
            bar.end_epoch(epoch, monitor, monitored)
    accelerator.wait_for_everyone()
    result.seconds = time.perf_counter() - started
    result.checkpoint = ctx.folder.checkpoint_path(stage, "best")
    if runner is not None:
        runner.close()
    if accelerator.unwrap_model(objective).taps is not None:
        accelerator.unwrap_model(objective).taps.close()
    accelerator.free_memory()
    return result


def load_stage_model(ctx: RunContext, plan: StagePlan, factory: ModelFactory, which: str) -> nn.Module:
    """A finished stage's best or last weights, frozen on the device, ready to teach."""
    model = factory.build(ctx.info)
    load_weights(model, ctx.folder.path / ctx.folder.checkpoint_path(plan.name, which))
    if plan.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return frozen(ctx.accelerator.prepare_model(model.to(ctx.device), evaluation_mode=True))


def open_dataset(recipe: Recipe) -> tuple[DatasetProvider, DataInfo]:
    """The recipe's dataset provider, checked (missing files are reported now), and its info."""
    with located(recipe.source, "data"):
        provider = get_catalog().get("dataset", recipe.data.name)(recipe.data.params)
        provider.on_bad_sample = recipe.data.on_bad_sample
        provider.check()
        return provider, provider.info()


def warn_skipped(recipe: Recipe, skipped: list[str], shown: int = 5) -> None:
    """The warning at the start of a run that left bad samples out (``data.on_bad_sample``)."""
    listed = "; ".join(skipped[:shown])
    if len(skipped) > shown:
        listed += f"; and {len(skipped) - shown} more (see results.json)"
    warnings.warn(f"{recipe.source}: data.on_bad_sample = \"skip\": left out {len(skipped)} bad "
                  f"sample(s): {listed}", DataWarning, stacklevel=2)


def load_teacher_checkpoint(recipe: Recipe, factory: ModelFactory, info: DataInfo) -> nn.Module | None:
    """The teacher from ``teacher.checkpoint``, or None when the recipe trains it."""
    if recipe.teacher.checkpoint is None:
        return None
    path = Path(recipe.teacher.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{recipe.source}: teacher.checkpoint: file not found: {path}")
    with located(recipe.source, "teacher.checkpoint"):
        return factory.load(path, info)


def evaluate_loaded_teacher(ctx: RunContext, plan: StagePlan, teacher: nn.Module) -> tuple[nn.Module, StageResult]:
    """A teacher given as a checkpoint is evaluated, not trained."""
    spec, train = plan.spec, plan.train
    if train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    teacher = frozen(ctx.accelerator.prepare_model(teacher.to(ctx.device), evaluation_mode=True))
    _, eval_loader = ctx.loaders(train)
    eval_loader = ctx.accelerator.prepare_data_loader(eval_loader)
    metrics = evaluate(ctx, teacher, eval_loader, train.channels_last)
    result = StageResult(
        stage="teacher", model=describe(spec), params=count_parameters(teacher), trained=False,
        best=metrics, last=metrics, checkpoint=str(spec.checkpoint), generation=plan.generation,
    )
    return teacher, result


def run_one(recipe: Recipe, seed: int, *, progress: bool = True, output_dir: Path | None = None,
            folder_name: str | None = None, resume_dir: Path | None = None) -> Results:
    """Run every stage of a recipe with one seed and return its results (also written to the run
    folder). With ``resume_dir``, finished stages are reused and an interrupted one continues from
    its last finished epoch."""
    started = time.perf_counter()
    # The run folder's recipe records the seed actually used, so a resume needs nothing else.
    recipe = with_seed(recipe, seed)
    accelerator = make_accelerator(recipe.train.mixed_precision, recipe.train.log_with)
    catalog = get_catalog()
    set_seed(seed)

    provider, info = open_dataset(recipe)
    teacher_factory = catalog.get("teacher", recipe.teacher.name)(recipe.teacher.params)
    loaded_teacher = load_teacher_checkpoint(recipe, teacher_factory, info)

    with located(recipe.source, "data"):
        train_set, eval_set = provider.train_set(), provider.test_set()
        skipped = provider.skipped_samples()
        for split, data in (("train", train_set), ("eval", eval_set)):
            if len(data) == 0:
                note = f" ({len(skipped)} bad samples were skipped)" if skipped else ""
                raise DataError(f"the {split} split of '{recipe.data.name}' is empty{note}")
    if skipped and accelerator.is_main_process:
        warn_skipped(recipe, skipped)
    plans = plan_stages(recipe)
    factories = {plan.name: catalog.get(plan.role, plan.spec.name)(plan.spec.params) for plan in plans}
    # Every architecture is built once before the run folder exists: a bad model parameter stops
    # the run now, not after hours of teacher training.
    distinct = {describe(p.spec): p for p in plans if p.name != "teacher" or loaded_teacher is None}
    for plan in distinct.values():
        with located(recipe.source, plan.where):
            factories[plan.name].build(info)

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
    ctx = RunContext(recipe, seed, accelerator, provider, info, train_set, eval_set, folder, progress)
    ctx.tracking = RunTracking.start(accelerator, recipe, folder, resumed=resume_dir is not None)
    with located(recipe.source, "metric"):
        ctx.metric_objects = [(s, m.to(accelerator.device)) for s, m in build_metrics(recipe, info)]

    results = Results(name=recipe.run.name, run_dir=str(folder.path), seed=seed,
                      monitor=monitor, higher_is_better=higher_is_better,
                      skipped_samples=len(skipped), skipped_files=skipped[:SKIPPED_LISTED])
    from_checkpoint = loaded_teacher is not None
    # With the teacher-output cache no model is kept in memory between stages: students train
    # without their teacher, and the figure at the end loads every stage's best weights again.
    keep_models = not recipe.teacher.cache

    def stage_model(plan: StagePlan, which: str = "best") -> nn.Module:
        """A finished stage's weights, frozen on the device."""
        if plan.name == "teacher" and from_checkpoint:
            model = loaded_teacher if loaded_teacher is not None else load_teacher_checkpoint(recipe, teacher_factory, info)
            if plan.train.channels_last:
                model = model.to(memory_format=torch.channels_last)
            return frozen(accelerator.prepare_model(model.to(ctx.device), evaluation_mode=True))
        return load_stage_model(ctx, plan, factories[plan.name], which)

    def weights_file(plan: StagePlan, which: str) -> Path:
        if plan.name == "teacher" and from_checkpoint:
            return Path(recipe.teacher.checkpoint)
        return folder.path / folder.checkpoint_path(plan.name, which)

    models: dict[str, nn.Module] = {}  # each finished stage's best weights, frozen
    by_name = {plan.name: plan for plan in plans}
    for plan in plans:
        if plan.name in finished:
            result = finished[plan.name]
            if keep_models:
                models[plan.name] = stage_model(plan)
        elif plan.name == "teacher" and from_checkpoint:
            models["teacher"], result = evaluate_loaded_teacher(ctx, plan, loaded_teacher)
        else:
            teacher = cached = None
            if plan.teacher is not None:
                source = by_name[plan.teacher]
                which = "best" if source.name == "teacher" and from_checkpoint else plan.weights
                if recipe.teacher.cache:
                    cached = TeacherSource(source.name, weights_file(source, which),
                                           lambda source=source, which=which: stage_model(source, which))
                else:
                    teacher = models[source.name] if which == "best" else stage_model(source, which)
            state = None
            if resume_dir is not None:
                state_file = folder.state_path(plan.name)
                state = TrainingState.load(state_file) if state_file.is_file() else None
                folder.forget_epochs_after(plan.name, state.epoch if state else 0)
            result = train_stage(ctx, plan, factories[plan.name], teacher, resume=state, cached=cached)
            if keep_models:
                models[plan.name] = load_stage_model(ctx, plan, factories[plan.name], "best")
        if not keep_models:
            models.clear()
            loaded_teacher = None
            accelerator.free_memory()
        results.stages.append(result)
        if accelerator.is_main_process:
            results.save(folder.path / "results.json")  # a crash later keeps the finished stages

    results.seconds = time.perf_counter() - started
    results.complete = True
    if accelerator.is_main_process:
        results.save(folder.path / "results.json")
        if not keep_models:
            models = {plan.name: stage_model(plan) for plan in plans}
        folder.finish(results, provider, models)
    ctx.tracking.finish()
    accelerator.wait_for_everyone()
    return results


def cache_teacher(recipe: Recipe | str | Path | dict, *, overrides: list[str] | tuple = (), progress: bool = True,
                  output_dir: str | Path | None = None) -> list[TeacherCache]:
    """Build the teacher-output caches of a recipe whose teacher is a checkpoint, before any
    student trains (``kdengine cache-teacher``): one per stage taught by the teacher."""
    recipe = load_recipe(recipe, overrides=overrides)
    if recipe.teacher.checkpoint is None:
        raise KDEngineError(
            f"{recipe.source}: teacher.checkpoint: the teacher is trained in the run, so its cache is built "
            "after it is trained (set teacher.cache = true and run the recipe); cache-teacher needs a trained teacher"
        )
    seed = recipe.run.seed
    accelerator = make_accelerator(recipe.train.mixed_precision)
    set_seed(seed)
    provider, info = open_dataset(recipe)
    factory = get_catalog().get("teacher", recipe.teacher.name)(recipe.teacher.params)
    load_teacher_checkpoint(recipe, factory, info)  # a bad file stops here, before any work
    with located(recipe.source, "data"):
        train_set, eval_set = provider.train_set(), provider.test_set()
    ctx = RunContext(recipe, seed, accelerator, provider, info, train_set, eval_set, None, progress)
    root = default_cache_root(recipe, Path(output_dir) if output_dir is not None else Path(recipe.run.output_dir))
    teacher_train = recipe.teacher_train()

    def load_teacher() -> nn.Module:
        model = load_teacher_checkpoint(recipe, factory, info)
        if teacher_train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return frozen(accelerator.prepare_model(model.to(ctx.device), evaluation_mode=True))

    source = TeacherSource("teacher", Path(recipe.teacher.checkpoint), load_teacher)
    _, terms, _ = build_loss_terms(recipe, with_teacher=True)
    _, teacher_paths = tap_paths(terms)
    caches = []
    for plan in plan_stages(recipe):
        if plan.teacher != "teacher":
            continue
        loader = ctx.loaders(plan.train)[0]
        steps = len(loader) if plan.train.max_steps_per_epoch is None else min(len(loader), plan.train.max_steps_per_epoch)
        caches.append(open_teacher_cache(ctx, plan, source, teacher_paths, steps, root))
    return caches


def with_seed(recipe: Recipe, seed: int) -> Recipe:
    if recipe.run.seed == seed and recipe.run.seeds is None:
        return recipe
    updated = recipe.model_copy(update={"run": recipe.run.model_copy(update={"seed": seed, "seeds": None})})
    updated._source = recipe.source
    return updated


def resume(run_dir: str | Path, *, progress: bool = True) -> Results:
    """Continue an interrupted run in its own folder (``kdengine run --resume RUN_DIR``)."""
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise KDEngineError(f"{run_dir}: not a run folder (no recipe.json)")
    recipe = load_recipe(recipe_file)
    if (run_dir / "results.json").is_file() and Results.load(run_dir / "results.json").complete:
        raise KDEngineError(f"{run_dir}: this run already finished; nothing to resume")
    return run_one(recipe, recipe.run.seed, progress=progress, resume_dir=run_dir)


def run(recipe: Recipe | str | Path | dict, *, overrides: list[str] | tuple = (), progress: bool = True,
        output_dir: str | Path | None = None, seeds: list[int] | None = None) -> Results | "SeedSummary":
    """Run a recipe and return its results.

    With several seeds (``seeds=[0, 1, 2]`` or ``run.seeds`` in the recipe) the run is repeated
    once per seed, each in ``<run folder>/seed-<n>/``, and a :class:`SeedSummary` with mean and
    standard deviation of every stage's best and last metrics is returned (and written as
    ``summary.json`` / ``summary.md``).
    """
    recipe = load_recipe(recipe, overrides=overrides)
    seeds = seeds or recipe.run.seeds
    if not seeds:
        return run_one(recipe, recipe.run.seed, progress=progress,
                       output_dir=Path(output_dir) if output_dir is not None else None)
    from kdengine.seeds import run_seeds

    return run_seeds(recipe, seeds, progress=progress, output_dir=output_dir)
