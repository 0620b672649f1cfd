"""Loss weights from the terms' gradients: ``[[loss]] weight = "auto"``.

A weight means little without the size of its term's gradient: in the edge recipe's
``0.5 * weighted_bce + 0.5 * sigmoid_mse`` the teacher's term makes about 5 % of the gradient, so
the student barely hears its teacher. An auto term gets the weight that gives it a chosen share
of the gradient instead (the gradient-norm balancing of GradNorm, Chen et al., ICML 2018, done
once, before training, rather than adapted at every step).

Before a stage's first optimizer step, on its first ``train.balance_steps`` batches (the batches
it trains on, augmented and taught as in training), each term's gradient with respect to the
student's trainable parameters is taken with its own backward pass, and its norm ``g_i`` averaged
over the batches. No update is made; BatchNorm statistics and the random generators are left as
found. Fixed weights are kept; an auto term ``j`` gets ``w_j`` with

    w_j * g_j = share_j * T,   T = sum_i w_i * g_i = F / (1 - sum_j share_j),

``F`` being the fixed terms' part of the total. When every term is auto the weights are scaled to
sum to 1. The weights then stay fixed for the stage, are printed and recorded with the stage's
result, and a resumed stage reuses the recorded ones: the run stays reproducible.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from accelerate.utils import concatenate, slice_tensors

from kdengine.errors import KDEngineError, RecipeError
from kdengine.io.state import rng_state, set_rng_state
from kdengine.recipe import LossSpec, Recipe
from kdengine.recipe.shares import AUTO, shares_problem, stage_shares
from kdengine.reporting.progress import console
from kdengine.teacher.base import StepTeacher, TeacherSource
from kdengine.train.objective import StudentObjective

if TYPE_CHECKING:
    from kdengine.recipe.stages import StagePlan
    from kdengine.train.context import RunContext
    from kdengine.train.setup import StageSetup

#: One measured batch: inputs, targets, the teacher's outputs for it, and how many leading rows
#: are labelled (None: all; the rest are transfer rows, whose targets are the teacher's alone).
Batch = tuple[torch.Tensor, Any, StepTeacher, int | None]

#: Under fp16 the per-term backward passes are scaled, as GradScaler scales training's, so that
#: small gradients do not underflow to zero (the norms are divided back).
FP16_SCALE = 2.0 ** 12


@dataclass
class LossWeights:
    """The weights of a stage's terms and how they were chosen."""

    keys: list[str]
    weights: list[float]
    #: Each term's share of the gradient (None: a fixed weight).
    shares: list[float | None]
    #: Batches the gradients were measured on (0: recorded earlier, reused).
    batches: int

    def record(self) -> dict[str, float]:
        return dict(zip(self.keys, self.weights))

    def describe(self, how: str | None = None) -> str:
        """One line: each term's weight, and its share or that it is fixed."""
        if how is None:
            how = (f"measured over {self.batches} batch{'es' if self.batches != 1 else ''}" if self.batches
                   else "recorded when the stage started")
        parts = [f"{key} {weight:.3g} " + ("(fixed)" if share is None else f"(share {share:.2f})")
                 for key, weight, share in zip(self.keys, self.weights, self.shares)]
        return f"loss weights (auto, {how}): " + ", ".join(parts)


def _term_gradient(value: torch.Tensor, params: list[torch.Tensor], keep_graph: bool) -> list[torch.Tensor]:
    if not value.requires_grad:  # a term that does not reach the student
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(value, params, retain_graph=keep_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _batch_norms(objective: StudentObjective, params: list[torch.Tensor], batch: Batch, autocast: Callable,
                 micro_batch: int | None, scale: float) -> list[float]:
    """Each term's gradient norm on one batch (as micro-batches under a memory budget, the
    gradients summed with each micro-batch's share of the rows: the batch's gradient)."""
    inputs, targets, teach, labelled = batch
    rows = inputs.shape[0]
    width = rows if labelled is not None else micro_batch or rows  # transfer rows: one pass, as in training
    sums: list[list[torch.Tensor]] | None = None
    for start in range(0, rows, width):
        part = slice(start, min(start + width, rows))
        whole = part.stop - part.start == rows
        x, y = (inputs, targets) if whole else (inputs[part], slice_tensors(targets, part))
        with autocast():
            t_out, t_feats = teach(x, part)
            _, values = objective(x, y, t_out, t_feats, labelled)
        factor = scale * (part.stop - part.start) / rows
        grads = [_term_gradient(v * factor, params, keep_graph=j < len(values) - 1) for j, v in enumerate(values)]
        sums = grads if sums is None else [[a + b for a, b in zip(s, g)] for s, g in zip(sums, grads)]
    return [float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in term]))) / scale
            for term in sums]


def measure_gradient_norms(objective: StudentObjective, batches: Iterable[Batch], *,
                           autocast: Callable = contextlib.nullcontext, micro_batch: int | None = None,
                           scale: float = 1.0) -> tuple[list[float], int]:
    """Each term's gradient norm with respect to the student's trainable parameters, summed over
    the batches whose norms are all finite, and how many those were. The objective is in training
    mode while measuring (as in training); its buffers (BatchNorm statistics), the modules' modes
    and the random generators are restored afterwards, and no parameter or ``.grad`` changes."""
    params = [p for p in objective.student.parameters() if p.requires_grad]
    buffers = {name: b.detach().clone() for name, b in objective.named_buffers()}
    modes = [(m, m.training) for m in objective.modules()]
    rng = rng_state()
    sums: list[float] | None = None
    counted = 0
    objective.train()
    try:
        for batch in batches:
            norms = _batch_norms(objective, params, batch, autocast, micro_batch, scale)
            if all(math.isfinite(n) for n in norms):
                sums = norms if sums is None else [a + b for a, b in zip(sums, norms)]
                counted += 1
    finally:
        if hasattr(batches, "close"):  # a generator over a data loader: let its workers go now
            batches.close()
        with torch.no_grad():
            for name, buffer in objective.named_buffers():
                buffer.copy_(buffers[name])
        for module, mode in modes:
            module.training = mode
        set_rng_state(rng)
    return sums or [], counted


def solve_weights(weights: list[float | str], shares: list[float | None], norms: list[float],
                  labels: list[str], source: str = "<recipe>") -> list[float]:
    """The weights that give each auto term its share of the total weighted gradient norm, the
    fixed ones kept (``labels`` name the terms in errors: ``loss[1]``, in the recipe ``source``)."""
    auto = [j for j, w in enumerate(weights) if w == AUTO]
    for j in auto:
        if not norms[j] > 0:
            raise KDEngineError(
                f"{source}: {labels[j]}.weight: \"auto\" needs the term's gradient, and its gradient with "
                "respect to the student's trainable parameters measured zero (do its feature taps reach the "
                "student's parameters?); give it a number as its weight")
    if len(auto) == len(weights):
        raw = [shares[j] / norms[j] for j in auto]
        return [r / sum(raw) for r in raw]
    fixed_part = sum(w * g for w, g in zip(weights, norms) if w != AUTO)
    if not fixed_part > 0:
        first = next(i for i, w in enumerate(weights) if w != AUTO)
        raise KDEngineError(
            f"{source}: {labels[first]}.weight: the fixed-weight terms' gradient measured zero, so there is "
            "nothing to give the \"auto\" terms a share of; give the fixed terms a weight above 0, or make every "
            "term auto")
    total = fixed_part / (1.0 - sum(shares[j] for j in auto))
    return [shares[j] * total / norms[j] if w == AUTO else w for j, w in enumerate(weights)]


def loss_labels(recipe: Recipe, specs: list[LossSpec]) -> list[str]:
    """``loss[i]`` for each of a stage's terms, i being its place in the recipe."""
    return [f"loss[{next(i for i, s in enumerate(recipe.loss) if s is spec)}]" for spec in specs]


def first_batches(setup: "StageSetup", source: TeacherSource, count: int) -> Iterable[Batch]:
    """The stage's first ``count`` training batches of epoch 1, whole on every process: each
    process's share of the rows (``split_batches``) augmented and taught as that process trains on
    it, put back together. The "auto" weights measured on them then do not depend on the process
    count: the gradient of a share of the rows is noisier, its norm larger, than the whole batch's.
    With a transfer set the batches hold the step's transfer rows too, as the stage trains on them
    (the distillation terms' gradients come from every row, the label terms' from the labelled)."""
    for step, batch in enumerate(islice(setup.train_loader(1), count)):
        shares = setup.shares(batch, 1, step)
        if len(shares) == 1:
            inputs, targets, labelled = shares[0]
            yield inputs, targets, source.step(1, step, 0), labelled
            continue
        taught = [source.step(1, step, p)(x, slice(0, x.shape[0])) for p, (x, _, _) in enumerate(shares)]
        order, labelled = labelled_first([(x.shape[0], n) for x, _, n in shares])
        yield (torch.cat([x for x, _, _ in shares])[order], concatenate([y for _, y, _ in shares]),
               whole_batch_teacher(taught, order), labelled)


def labelled_first(shares: list[tuple[int, int | None]]) -> tuple[torch.Tensor, int | None]:
    """The processes' shares of a step, each ``(rows, labelled rows or None)`` and each its
    labelled rows first, put together as one batch whose labelled rows all come first (what the
    objective's ``labelled`` means): the row order, and how many are labelled (None: all)."""
    labelled: list[int] = []
    transfer: list[int] = []
    start = 0
    for rows, n in shares:
        n = rows if n is None else n
        labelled += range(start, start + n)
        transfer += range(start + n, start + rows)
        start += rows
    any_transfer = any(n is not None for _, n in shares)
    return torch.tensor(labelled + transfer), len(labelled) if any_transfer else None


def whole_batch_teacher(taught: list[tuple[Any, dict[str, torch.Tensor]]], order: torch.Tensor) -> StepTeacher:
    """One step's teacher for the whole batch, from each process's share of its outputs in process
    order, its rows put in ``order`` (the batch's)."""
    outputs = None if taught[0][0] is None else slice_tensors(concatenate([out for out, _ in taught]), order)
    features = {path: torch.cat([feats[path] for _, feats in taught])[order] for path in taught[0][1]}
    return lambda inputs, rows: slice_tensors((outputs, features), rows)


def balance_stage(ctx: "RunContext", plan: "StagePlan", objective: StudentObjective, specs: list[LossSpec],
                  weights: list[float | str], keys: list[str], batches: Callable[[int], Iterable[Batch]],
                  steps: int, micro_batch: int | None, recorded: dict[str, float] | None) -> LossWeights | None:
    """The stage's loss weights when some are auto (None when none is): the ``recorded`` ones of
    a resumed stage, else measured on ``batches(n)``, its first n training batches."""
    if AUTO not in weights:
        return None
    shares = stage_shares(specs)
    if recorded:
        missing = [k for k in keys if k not in recorded]
        if missing:
            raise KDEngineError(f"{plan.name}: the recorded loss weights have no value for {', '.join(missing)}; "
                                "the run folder's training state does not match its recipe")
        balanced = LossWeights(keys, [recorded[k] for k in keys], shares, 0)
    else:
        balanced = _measure(ctx, plan, objective, specs, weights, keys, shares, batches, steps, micro_batch)
    if ctx.progress and ctx.accelerator.is_main_process:
        console.print(f"{plan.name}: {balanced.describe()}", soft_wrap=True, markup=False, highlight=False)
    return balanced


def _measure(ctx: "RunContext", plan: "StagePlan", objective: StudentObjective, specs: list[LossSpec],
             weights: list[float | str], keys: list[str], shares: list[float | None],
             batches: Callable[[int], Iterable[Batch]], steps: int, micro_batch: int | None) -> LossWeights:
    labels = loss_labels(ctx.recipe, specs)
    problem = shares_problem(specs, labels)
    if problem:
        raise RecipeError(ctx.recipe.source, [problem])
    accelerator = ctx.accelerator
    count = min(plan.train.balance_steps, steps)
    scale = FP16_SCALE if accelerator.mixed_precision == "fp16" else 1.0
    sums, counted = measure_gradient_norms(objective, batches(count), autocast=accelerator.autocast,
                                           micro_batch=micro_batch, scale=scale)
    totals = torch.tensor((sums or [0.0] * len(keys)) + [counted], dtype=torch.float64, device=ctx.device)
    if accelerator.num_processes > 1:  # every process gets the same weights
        totals = accelerator.reduce(totals, reduction="sum")
    measured = int(totals[-1])
    if measured == 0:
        raise KDEngineError(f"{ctx.recipe.source}: loss: measuring the \"auto\" weights ({plan.name}): every one of "
                            f"the first {count} batches gave a non-finite gradient")
    norms = (totals[:-1] / measured).tolist()
    return LossWeights(keys, solve_weights(weights, shares, norms, labels, ctx.recipe.source), shares, count)
