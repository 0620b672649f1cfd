"""``kdengine validate``: a dry run of a recipe, before spending hours on it.

It builds the dataset, teacher and student, pushes one training batch through the augmentation,
the teacher, the student and every loss term (so feature taps and adapter shapes are checked),
and measures parameters, FLOPs (torch.utils.flop_counter) and the batch's memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from kdengine.errors import KDEngineError, located
from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.features import FeatureTaps
from kdengine.recipe import Recipe, load_recipe
from kdengine.recipe.shares import AUTO, stage_shares
from kdengine.recipe.stages import plan_stages
from kdengine.reporting.tracking import check_installed
from kdengine.teacher.precision import InferenceSetting, TeacherRunner, candidates, choose
from kdengine.teacher.replay import BatchAugmentStream, SeededItems, check_replayable
from kdengine.tools.layers import Layer, format_layers, model_layers
from kdengine.train.context import open_dataset, open_splits
from kdengine.train.coupling import batch_coupled, coupling_note
from kdengine.train.models import count_parameters, describe
from kdengine.teacher.given import load_teacher_checkpoint
from kdengine.train.balance import LossWeights, loss_labels, measure_gradient_norms, solve_weights
from kdengine.train.objective import build_loss_terms, set_up_objective, tap_paths, term_keys
from kdengine.train.tensors import prepare_inputs


@dataclass
class ModelReport:
    role: str
    model: str
    params: int
    forward_flops: int
    seconds: float


@dataclass
class DryRunReport:
    recipe: str
    batch_shape: tuple[int, ...]
    models: list[ModelReport] = field(default_factory=list)
    loss_values: dict[str, float] = field(default_factory=dict)
    #: How the ``weight = "auto"`` terms were weighted for the batch's loss values, per pair.
    loss_weights: list[str] = field(default_factory=list)
    peak_memory_bytes: int = 0
    memory_measured: bool = False
    #: Seconds per 32-image teacher forward for each candidate setting (``teacher.precision = "auto"``).
    teacher_inference: dict[str, float] = field(default_factory=dict)
    #: Bad samples of the train split left out (``data.on_bad_sample = "skip"``).
    skipped: list[str] = field(default_factory=list)
    #: With ``layers=True``: each distinct model's tappable layers on the batch, by ``role model``.
    layers: dict[str, list[Layer]] = field(default_factory=dict)
    #: Under ``train.max_memory``: by stage, what would see micro-batches instead of the whole batch.
    micro_batch_coupled: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.recipe}: OK", f"  batch: {tuple(self.batch_shape)}"]
        if self.skipped:
            out.append(f"  skipped {len(self.skipped)} bad train sample(s), e.g. {self.skipped[0]}")
        for m in self.models:
            out.append(f"  {m.role:<8} {m.model}: {m.params / 1e6:.3f}M params, "
                       f"{m.forward_flops / 1e9:.3f} GFLOPs per batch forward, {m.seconds * 1e3:.0f} ms")
        for name, value in self.loss_values.items():
            out.append(f"  loss {name}: {value:.4f}")
        out += [f"  {line}" for line in self.loss_weights]
        if self.teacher_inference:
            fastest = min(self.teacher_inference, key=self.teacher_inference.get)
            for setting, seconds in self.teacher_inference.items():
                mark = "  <- fastest, used" if setting == fastest else ""
                out.append(f"  teacher inference {setting}: {seconds * 1e3:.0f} ms per 32 images{mark}")
        kind = "peak (measured)" if self.memory_measured else "estimate (weights, grads, optimizer state, saved activations)"
        out.append(f"  training memory {kind}: {self.peak_memory_bytes / 2**20:.1f} MiB")
        for stage, coupled in self.micro_batch_coupled.items():
            out.append(f"  train.max_memory: {stage}: if its batch is split into micro-batches, "
                       f"{coupling_note(coupled)}")
        for label, layers in self.layers.items():
            out.append(f"  {label}: {len(layers)} tappable layers (module paths for feature losses)")
            out += format_layers(layers, indent="    ")
        return out


def _flops(model, inputs) -> tuple[int, float]:
    counter = FlopCounterMode(display=False)
    start = time.perf_counter()
    with torch.inference_mode(), counter:
        model(inputs)
    return counter.get_total_flops(), time.perf_counter() - start


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
        with located(recipe.source, "teacher"):
            teacher = teacher_factory.build(info)
    teacher.eval().requires_grad_(False)
    plans = [plan for plan in plan_stages(recipe) if plan.role == "student"]
    models = {"teacher": teacher}
    for plan in plans:
        torch.manual_seed(recipe.run.seed)
        with located(recipe.source, plan.where):
            models[plan.name] = catalog.get("student", plan.spec.name)(plan.spec.params).build(info)

    train_set, _, _ = open_splits(recipe, provider)  # a missing val split stops the dry run as it would the run
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

    report = DryRunReport(recipe=recipe.source, batch_shape=tuple(inputs.shape),
                          skipped=provider.skipped_samples())
    described = [("teacher", "teacher", recipe.teacher)] + [(p.name, "student", p.spec) for p in plans]
    seen_specs = set()
    distinct: dict[str, tuple[list[str], str]] = {}  # model -> (its roles, a stage building it)
    for name, role, spec in described:
        roles = distinct.setdefault(describe(spec), ([], name))[0]
        if role not in roles:
            roles.append(role)
        if describe(spec) in seen_specs:
            continue
        seen_specs.add(describe(spec))
        flops, seconds = _flops(models[name], inputs)
        report.models.append(ModelReport(role, describe(spec), count_parameters(models[name]), flops, seconds))

    # Every distillation pair pushes the batch through all its loss terms (taps, adapters, shapes).
    pairs = [p for p in plans if p.teacher is not None]
    for plan in pairs:
        prefix = f"{plan.name}: " if len(pairs) > 1 else ""
        values, memory, balanced = _check_pair(recipe, models[plan.teacher].eval().requires_grad_(False),
                                               models[plan.name], inputs, targets)
        report.loss_values.update({prefix + k: v for k, v in values.items()})
        if balanced is not None:
            report.loss_weights.append(prefix + balanced.describe(
                how="measured on this one batch; training measures on each stage's first "
                    f"train.balance_steps = {plan.train.balance_steps} batches"))
        report.peak_memory_bytes = max(report.peak_memory_bytes, memory)
    if torch.cuda.is_available() and inputs.is_cuda:
        report.peak_memory_bytes = torch.cuda.max_memory_allocated()
        report.memory_measured = True
    report.micro_batch_coupled = micro_batch_coupling(recipe, models)
    if recipe.teacher.precision == "auto":
        options = candidates("auto", recipe.teacher.channels_last, recipe.train.mixed_precision,
                             recipe.train.channels_last, inputs.device)
        runner = TeacherRunner(teacher, None, options[0])
        report.teacher_inference = {str(o): t for o, t in choose(runner, options, inputs).items()}
        teacher.to(memory_format=torch.contiguous_format)
    if layers:  # last: the listing puts the models in eval mode
        report.layers = {f"{' and '.join(roles)} {model}": model_layers(models[name], inputs)
                         for model, (roles, name) in distinct.items()}
    return report


def micro_batch_coupling(recipe: Recipe, models: dict) -> dict[str, list[str]]:
    """For each stage trained under ``train.max_memory``: its loss terms that are not per-sample
    and its model's BatchNorm layers (they would see micro-batches, not the whole batch)."""
    out = {}
    for plan in plan_stages(recipe):
        if plan.train.max_memory is None or (plan.name == "teacher" and recipe.teacher.checkpoint is not None):
            continue
        specs, terms, _ = build_loss_terms(recipe, with_teacher=plan.teacher is not None)
        coupled = batch_coupled(models[plan.name], terms, [spec.name for spec in specs])
        if coupled:
            out[plan.name] = coupled
    return out


def _check_pair(recipe: Recipe, teacher, student, inputs,
                targets) -> tuple[dict[str, float], int, LossWeights | None]:
    """Loss values for one teacher -> student pair, the training-memory estimate, and the weights
    of its ``weight = "auto"`` terms (measured on this one batch, as a stage does on its first
    ``train.balance_steps``), None when no weight is auto."""
    specs, terms, weights = build_loss_terms(recipe, with_teacher=True)
    balanced = None
    _, teacher_paths = tap_paths(terms)
    teacher_taps = FeatureTaps(teacher, teacher_paths, role="teacher") if teacher_paths else None
    runner = TeacherRunner(teacher, teacher_taps, InferenceSetting("no", recipe.train.channels_last))
    objective = None
    try:
        objective = set_up_objective(student, terms, inputs, targets, runner)
        if AUTO in weights:
            norms, _ = measure_gradient_norms(objective, [(inputs, targets, lambda x, rows: runner(x))])
            shares = stage_shares(specs)
            weights = solve_weights(weights, shares, norms, loss_labels(recipe, specs), recipe.source)
            balanced = LossWeights(term_keys(specs), weights, shares, 1)
        t_out, t_feats = runner(inputs)
        saved = [0]

        def pack(tensor):
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _, values = objective(inputs, targets, t_out, t_feats)
            total = sum(w * v for w, v in zip(weights, values))
        total.backward()
    finally:
        runner.close()
        if objective is not None:
            objective.close()
    losses = {key: float(v.detach()) for key, v in zip(term_keys(specs), values)}
    losses["total"] = float(total.detach())
    trainable = sum(p.numel() * p.element_size() for p in objective.parameters())
    optimizer_slots = 1 if recipe.train.optimizer.name == "sgd" else 2
    frozen_teacher = sum(p.numel() * p.element_size() for p in teacher.parameters())
    return losses, trainable * (2 + optimizer_slots) + frozen_teacher + saved[0], balanced
