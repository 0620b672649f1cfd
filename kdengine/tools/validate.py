"""``kdengine validate``: a dry run of a recipe, before spending hours on it.

It builds the dataset, teacher and student, pushes one training batch through the augmentation,
the teacher, the student and every loss term (so feature taps and adapter shapes are checked),
and measures parameters, FLOPs (torch.utils.flop_counter), the batch's memory and, with
``teacher.cache = true``, the size the teacher-output cache will take on disk.

A large teacher on a CPU takes seconds per batch, so the models and losses run on the
first ``CHECK_ROWS`` rows of the (augmented) batch, not all of it: every shape, tap and adapter
is checked the same on 4 rows as on 16, and FLOPs, times and saved activations grow linearly with
the rows of a batch, so they are scaled to the whole batch. No pass is made twice: each teaching
model runs once (its outputs serve every pair it teaches), each student once per pair (the pass
that sets up its loss terms is the one the backward goes through), and FLOPs and times are taken
on those passes, once per distinct model, not on passes of their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from kdengine.errors import KDEngineError, located
from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.features import FeatureTaps
from kdengine.recipe import Recipe, load_recipe
from kdengine.recipe.shares import AUTO, stage_shares
from kdengine.recipe.stages import StagePlan, plan_stages
from kdengine.reporting.tracking import check_installed
from kdengine.teacher.cache import predicted_bytes
from kdengine.teacher.cached import cached_epochs
from kdengine.teacher.given import load_teacher_checkpoint
from kdengine.teacher.precision import InferenceSetting, TeacherRunner, candidates, choose
from kdengine.teacher.replay import BatchAugmentStream, SeededItems, check_replayable
from kdengine.teacher.topk import topk_problem
from kdengine.tools.dry_run_report import CacheEstimate, DryRunReport, MemoryEstimate, ModelReport
from kdengine.tools.layers import Layer, model_layers
from kdengine.train.balance import LossWeights, loss_labels, measure_gradient_norms, solve_weights
from kdengine.train.context import open_dataset, open_splits, step_sizes
from kdengine.plugins.coupling import batch_coupled
from kdengine.train.models import count_parameters, describe
from kdengine.train.objective import check_taps, set_up_and_run, set_up_objective
from kdengine.train.setup import StageLosses
from kdengine.runtime.tensors import prepare_inputs
from kdengine.train.transfer import open_transfer

#: Rows of the batch each candidate of ``teacher.precision = "auto"`` is timed on: enough to rank
#: them (a U-Net with a ResNet-34 encoder at 256 px ranks its four the same on 2, 4 and 16 rows),
#: few enough that four candidates of a large teacher take seconds, not minutes. A run times them
#: again on up to 32 rows of its first batch, and keeps its own choice.
TIMING_ROWS = 2

#: Rows of the batch the dry run pushes through the models and losses (see the module
#: docstring); more than one, so that BatchNorm in training mode has a batch to normalise over.
CHECK_ROWS = 4

#: A teacher's output and tapped features on the batch.
Taught = tuple[torch.Tensor, dict[str, torch.Tensor]]


class ForwardMeter:
    """FLOPs and wall time of each distinct model's forward pass, taken on a pass the dry run makes
    anyway, once per model description (a teacher and a student of one architecture: once)."""

    def __init__(self):
        self.measured: dict[str, tuple[int, float]] = {}

    @contextlib.contextmanager
    def next_forward(self, key: str, model: nn.Module):
        """Within the block, ``model``'s next forward pass, whoever makes it, is counted as ``key``'s
        (unless ``key`` was counted before): the model's own pass only, not its caller's loss terms."""
        if key in self.measured:
            yield
            return
        own = vars(model).get("forward")  # a forward set on the instance (activation checkpointing) stays
        original = model.forward

        def restore():
            if own is not None:
                model.forward = own
            else:
                vars(model).pop("forward", None)

        def counted(*args, **kwargs):
            restore()
            counter = FlopCounterMode(display=False)
            start = time.perf_counter()
            with counter:
                output = original(*args, **kwargs)
            self.measured[key] = (counter.get_total_flops(), time.perf_counter() - start)
            return output

        model.forward = counted
        try:
            yield
        finally:
            restore()


def first_rows(value, rows: int):
    """The first ``rows`` rows of a batch's inputs or targets (a tensor, or a list or tuple of them
    or of per-sample items, as collate functions of whole images of different sizes give)."""
    if isinstance(value, torch.Tensor):
        return value[:rows]
    if isinstance(value, (list, tuple)):
        return type(value)(value[:rows])
    return value


def whole_batch(layers: list[Layer], batch: int) -> list[Layer]:
    """Layer output shapes as the whole batch gives them (the layers ran on its first rows)."""
    return [dataclasses.replace(layer, shape=(batch, *layer.shape[1:])) if len(layer.shape) else layer
            for layer in layers]


def _copies(taught: Taught) -> Taught:
    output, features = taught
    return output.clone(), {k: v.clone() for k, v in features.items()}


def dry_run(source, overrides=(), layers: bool = False) -> DryRunReport:
    """Build everything and push one training batch through it; with ``layers``, also list the
    teacher's and each distinct student's tappable layers with their output shapes on that batch."""
    recipe: Recipe = load_recipe(source, overrides=overrides)
    check_installed(recipe.train.log_with)  # a tracker whose package is missing would fail the run
    catalog = get_catalog()
    provider, info = open_dataset(recipe)
    teacher_factory = catalog.get("teacher", recipe.teacher.name)(recipe.teacher.params)
    teacher = load_teacher_checkpoint(recipe, teacher_factory, info)
    if teacher is None:
        torch.manual_seed(recipe.run.seed)  # the same loss values on every dry run of a recipe
        with located(recipe.source, "teacher"):
            teacher = teacher_factory.build(info)
    teacher.eval().requires_grad_(False)
    plans = [plan for plan in plan_stages(recipe) if plan.role == "student"]
    models, by_architecture = {"teacher": teacher}, {}
    # The taught students first: a scratch baseline runs in no pair, so a taught twin stands in for it.
    for plan in sorted(plans, key=lambda p: p.teacher is None or p.teacher_labels):
        if (plan.teacher is None or plan.teacher_labels) and describe(plan.spec) in by_architecture:
            models[plan.name] = by_architecture[describe(plan.spec)]
            continue
        torch.manual_seed(recipe.run.seed)
        with located(recipe.source, plan.where):
            models[plan.name] = catalog.get("student", plan.spec.name)(plan.spec.params).build(info)
        by_architecture.setdefault(describe(plan.spec), models[plan.name])

    train_set, _, _ = open_splits(recipe, provider)  # a missing val split stops the dry run as it would the run
    open_transfer(recipe, provider, recipe.run.seed)  # an empty or overlapping transfer set stops it too
    with located(recipe.source, "data"):
        loader = DataLoader(train_set, batch_size=min(recipe.train.batch_size, len(train_set)), shuffle=False,
                            collate_fn=provider.collate_fn())
        inputs, targets = provider.batch_augment(*next(iter(loader)))
    if recipe.teacher.cache:
        # The cache is only right if the student's augmented batches can be drawn again exactly.
        seeded = DataLoader(SeededItems(train_set, recipe.run.seed), batch_size=loader.batch_size,
                            sampler=[(1, i) for i in range(loader.batch_size)], collate_fn=provider.collate_fn())
        problem = check_replayable(lambda: next(iter(seeded)),
                                   BatchAugmentStream(provider.batch_augment, recipe.run.seed, torch.device("cpu")))
        if problem is not None:
            raise KDEngineError(f"{recipe.source}: teacher.cache: dataset '{recipe.data.name}': {problem}")
    inputs = prepare_inputs(inputs, recipe.train.channels_last)
    batch_shape = tuple(inputs.shape)
    inputs, targets = first_rows(inputs, CHECK_ROWS), first_rows(targets, CHECK_ROWS)
    scale = batch_shape[0] / inputs.shape[0]

    report = DryRunReport(recipe=recipe.source, batch_shape=batch_shape, checked_rows=inputs.shape[0],
                          skipped=provider.skipped_samples())
    described = [("teacher", "teacher", recipe.teacher)] + [(p.name, "student", p.spec) for p in plans]
    spec_of = {name: spec for name, _, spec in described}
    distinct: dict[str, tuple[list[str], str]] = {}  # model -> (its roles, a stage building it)
    for name, role, spec in described:
        roles = distinct.setdefault(describe(spec), ([], name))[0]
        if role not in roles:
            roles.append(role)

    meter = ForwardMeter()
    taught_losses = StageLosses.of(recipe, taught=True)
    teacher_paths = taught_losses.teacher_paths
    taught: dict[str, Taught] = {}  # by teaching stage; every pair has the same loss terms, so the same taps

    def outputs_of(name: str) -> Taught:
        if name not in taught:
            model = models[name].eval().requires_grad_(False)
            with located(recipe.source, "loss"):
                check_taps(taught_losses.terms, taught_losses.names, teacher=model)
            taps = FeatureTaps(model, teacher_paths, role="teacher") if teacher_paths else None
            runner = TeacherRunner(model, taps, InferenceSetting("no", recipe.train.channels_last))
            try:
                with meter.next_forward(describe(spec_of[name]), model):
                    taught[name] = runner(inputs)
            finally:
                runner.close()
        return _copies(taught[name])

    # Every distillation pair pushes the batch through all its loss terms (taps, adapters, shapes).
    pairs = [p for p in plans if p.teacher is not None and not p.teacher_labels]  # scratch-transfer: label terms
    for plan in pairs:
        prefix = f"{plan.name}: " if len(pairs) > 1 else ""
        taught_here = outputs_of(plan.teacher)
        with located(recipe.source, "loss"):  # a term's taps or shapes: its [[loss]] entry is named
            values, memory, balanced = _check_pair(recipe, models[plan.teacher], taught_here,
                                                   models[plan.name], inputs, targets,
                                                   meter.next_forward(describe(plan.spec), models[plan.name]))
        report.loss_values.update({prefix + k: v for k, v in values.items()})
        if balanced is not None:
            report.loss_weights.append(prefix + balanced.describe(
                how="measured on this one batch; training measures on each stage's first "
                    f"train.balance_steps = {plan.train.balance_steps} batches"))
        report.peak_memory_bytes = max(report.peak_memory_bytes, memory.total(scale))
    for model, (roles, name) in distinct.items():
        if model not in meter.measured:  # a model no pair ran
            with meter.next_forward(model, models[name]), torch.inference_mode():
                models[name](inputs)
        flops, seconds = meter.measured[model]
        report.models.append(ModelReport(roles[0], model, count_parameters(models[name]), round(flops * scale),
                                         seconds * scale))
    report.micro_batch_coupled = micro_batch_coupling(recipe, models)
    if recipe.teacher.cache:
        report.caches = cache_estimates(recipe, pairs, len(train_set), taught, teacher_paths)
    if recipe.teacher.precision == "auto":
        options = candidates("auto", recipe.teacher.channels_last, recipe.train.mixed_precision,
                             recipe.train.channels_last, inputs.device)
        runner = TeacherRunner(teacher, None, options[0])
        report.teacher_inference = {str(o): t for o, t in choose(runner, options, inputs, rows=TIMING_ROWS).items()}
        report.timing_rows = min(TIMING_ROWS, inputs.shape[0])
        teacher.to(memory_format=torch.contiguous_format)
    if layers:  # last: the listing puts the models in eval mode
        report.layers = {f"{' and '.join(roles)} {model}": whole_batch(model_layers(models[name], inputs), batch_shape[0])
                         for model, (roles, name) in distinct.items()}
    return report


def cache_estimates(recipe: Recipe, pairs: list[StagePlan], train_rows: int, taught: dict[str, Taught],
                    teacher_paths: list[str]) -> list[CacheEstimate]:
    """The size of each teacher-output cache the run will build, from its teacher's outputs on the
    batch; stages taught by the same weights with the same batch layout share one cache."""
    spec = recipe.teacher
    groups: dict[tuple, list[StagePlan]] = {}
    for plan in pairs:
        train = plan.train
        key = (plan.teacher, plan.weights, train.batch_size, train.max_steps_per_epoch, train.mixed_precision,
               train.channels_last)
        groups.setdefault(key, []).append(plan)
    out = []
    for (teacher, *_), plans in groups.items():
        output, features = taught[teacher]
        problem = topk_problem(tuple(output.shape), teacher_paths) if spec.cache_topk is not None else None
        if problem is not None:
            raise KDEngineError(f"{recipe.source}: {problem}")
        rows = sum(step_sizes(train_rows, plans[0].train))
        # a cache holds as many epochs as its longest stage, or teacher.cache_views of them
        epochs = cached_epochs(recipe, max(plan.train.epochs for plan in plans))
        values = {"output": output, **{f"feat-{i}": features[p] for i, p in enumerate(teacher_paths)}}
        out.append(CacheEstimate([plan.name for plan in plans],
                                 predicted_bytes(values, rows, epochs, spec.cache_dtype, spec.cache_topk),
                                 epochs, rows, spec.cache_dtype, spec.cache_topk))
    return out


def micro_batch_coupling(recipe: Recipe, models: dict) -> dict[str, list[str]]:
    """For each stage trained under ``train.max_memory``: its loss terms that are not per-sample
    and its model's BatchNorm layers (they would see micro-batches, not the whole batch)."""
    out = {}
    for plan in plan_stages(recipe):
        if plan.train.max_memory is None or (plan.name == "teacher" and recipe.teacher.checkpoint is not None):
            continue
        losses = StageLosses.of(recipe, taught=plan.teacher is not None and not plan.teacher_labels)
        coupled = batch_coupled(models[plan.name], losses.terms, [spec.name for spec in losses.specs])
        if coupled:
            out[plan.name] = coupled
    return out


def _check_pair(recipe: Recipe, teacher: nn.Module, taught: Taught, student: nn.Module, inputs, targets,
                measuring) -> tuple[dict[str, float], MemoryEstimate, LossWeights | None]:
    """Loss values for one teacher -> student pair (``taught``: the teacher's output and features
    on the batch), the training-memory estimate, and the weights of its ``weight = "auto"`` terms
    (measured on this one batch, as a stage does on its first ``train.balance_steps``), None when
    no weight is auto. ``measuring`` is entered around the student's first forward pass."""
    losses = StageLosses.of(recipe, taught=True)
    specs, terms, weights, names = losses.specs, losses.terms, losses.weights, losses.names
    t_out, t_feats = taught
    balanced = None
    saved = [0, 0]  # bytes saved for backward: [activations, weights (or their casts)]
    rows = inputs.shape[0]
    weights_of = [*student.parameters(), *teacher.parameters()]
    weight_storage = {w.untyped_storage().data_ptr() for w in weights_of}
    weight_shapes = {tuple(w.shape) for w in weights_of}

    def pack(tensor):
        # Layers save their weights (or autocast's casts of them) beside the activations; those do
        # not grow with the rows checked, so they are kept apart from what is scaled to the batch.
        is_weight = tensor.untyped_storage().data_ptr() in weight_storage or (
            tuple(tensor.shape) in weight_shapes and (tensor.dim() == 0 or tensor.shape[0] != rows))
        saved[int(is_weight)] += tensor.numel() * tensor.element_size()
        return tensor

    objective = None
    try:
        if AUTO in weights:
            # The auto weights are measured on the objective once it is set up, before the loss
            # pass: the student runs twice here, as a stage's set-up does.
            with measuring:
                objective = set_up_objective(student, terms, inputs, targets, lambda x: _copies(taught),
                                             names=names)
            norms, _ = measure_gradient_norms(objective, [(inputs, targets, lambda x, rows: _copies(taught), None)])
            shares = stage_shares(specs)
            weights = solve_weights(weights, shares, norms, loss_labels(recipe, specs), recipe.source)
            balanced = LossWeights(names, weights, shares, 1)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                _, values = objective(inputs, targets, t_out, t_feats)
                total = sum(w * v for w, v in zip(weights, values))
        else:
            with measuring, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                objective, values = set_up_and_run(student, terms, inputs, targets, t_out, t_feats, names)
                total = sum(w * v for w, v in zip(weights, values))
        total.backward()
    finally:
        if objective is not None:
            objective.close()
    values_of = {key: float(v.detach()) for key, v in zip(names, values)}
    values_of["total"] = float(total.detach())
    trainable = sum(p.numel() * p.element_size() for p in objective.parameters())
    optimizer_slots = 1 if recipe.train.optimizer.name == "sgd" else 2
    frozen_teacher = sum(p.numel() * p.element_size() for p in teacher.parameters())
    return values_of, MemoryEstimate(trainable * (2 + optimizer_slots) + frozen_teacher + saved[1], saved[0]), balanced
