"""The student's training objective: its loss terms, their weights, and the feature taps they ask for.

:func:`set_up_objective` is the one place a teacher/student pair is put together with its loss
terms: the run, ``kdengine validate`` and the contract checks in ``kdengine.testing`` all use it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from kdengine.errors import KDEngineError
from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.components import LossContext, LossTerm
from kdengine.plugins.features import FeatureTaps, resolve_module
from kdengine.recipe import LossSpec, Recipe
from kdengine.recipe.shares import AUTO

#: ``teach(inputs) -> (teacher output, {path: teacher feature})``; ``(None, {})`` without a teacher.
Teach = Callable[[torch.Tensor], tuple[Any, dict[str, torch.Tensor]]]


def build_loss_terms(recipe: Recipe, with_teacher: bool) -> tuple[list[LossSpec], list[LossTerm], list[float | str]]:
    """The loss terms of a stage and their weights (``"auto"`` where the recipe says so: those
    are measured by :mod:`kdengine.train.balance`).

    Stages without a teacher keep only the terms that do not need one, with their fixed weights
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
        total = sum(w for w in weights if w != AUTO)
        if total > 0:
            weights = [w if w == AUTO else w / total for w in weights]
        elif AUTO not in weights:
            raise KDEngineError(
                f"{recipe.source}: loss: the terms that do not need the teacher have zero total weight"
            )
    return specs, terms, weights


def term_keys(specs: list[LossSpec]) -> list[str]:
    """One key per term for logs and records: its name, ``name#2``, ``name#3`` ... for the second
    and later terms of the same name (two ``cwd`` terms on different layers are two columns)."""
    counts: dict[str, int] = {}
    keys = []
    for spec in specs:
        counts[spec.name] = counts.get(spec.name, 0) + 1
        keys.append(spec.name if counts[spec.name] == 1 else f"{spec.name}#{counts[spec.name]}")
    return keys


def warmed_up(weights: list[float], specs: list[LossSpec], epoch: int) -> list[float]:
    """The weights in ``epoch`` (from 1): a term with ``warmup_epochs`` gets ``epoch / warmup_epochs``
    of its weight until it has all of it."""
    return [w * min(1.0, epoch / spec.warmup_epochs) if spec.warmup_epochs else w for w, spec in zip(weights, specs)]


def tap_paths(terms: list[LossTerm]) -> tuple[list[str], list[str]]:
    """The student's and the teacher's module paths that the terms tap, each once, in order."""
    student = list(dict.fromkeys(p for t in terms for p in t.student_taps()))
    teacher = list(dict.fromkeys(p for t in terms for p in t.teacher_taps()))
    return student, teacher


def check_taps(terms: list[LossTerm], names: list[str], student: nn.Module | None = None,
               teacher: nn.Module | None = None) -> None:
    """Every layer a term taps exists in its model (each model given is checked); the error
    names the term asking for a missing layer, so a user with several feature terms knows which
    ``[[loss]]`` entry to fix."""
    for name, term in zip(names, terms):
        for role, model, paths in (("student", student, term.student_taps()), ("teacher", teacher, term.teacher_taps())):
            if model is None:
                continue
            for path in paths:
                try:
                    resolve_module(model, path, role)
                except KDEngineError as error:
                    raise KDEngineError(f"loss '{name}': {error}") from None


def _shape(value: Any) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


@contextmanager
def blamed_on(name: str, term: LossTerm, ctx: LossContext) -> Iterator[None]:
    """A term that fails on the set-up batch (an adapter that cannot match the shapes it is given,
    a tap of the wrong kind of output) is reported as the term's error, with the shapes it saw;
    running out of memory is not the term's fault and passes through unchanged."""
    try:
        yield
    except (RuntimeError, ValueError, IndexError) as error:
        if isinstance(error, (KDEngineError, torch.OutOfMemoryError)):
            raise
        seen = [f"student output {_shape(ctx.student)}", f"teacher output {_shape(ctx.teacher)}"]
        seen += [f"student '{p}' {_shape(ctx.student_features[p])}" for p in term.student_taps()
                 if p in ctx.student_features]
        seen += [f"teacher '{p}' {_shape(ctx.teacher_features[p])}" for p in term.teacher_taps()
                 if p in ctx.teacher_features]
        raise KDEngineError(f"loss '{name}' fails on the shapes it is given ({', '.join(seen)}): {error}") from error


class StudentObjective(nn.Module):
    """The student and its loss terms as one module, so DDP sees every trainable parameter
    (including the adapters a feature loss owns) inside a single forward pass."""

    def __init__(self, student: nn.Module, terms: list[LossTerm], student_paths: list[str]):
        super().__init__()
        self.student = student
        self.terms = nn.ModuleList(terms)
        self.taps = FeatureTaps(student, student_paths, role="student") if student_paths else None

    def context(self, inputs, targets, teacher_out, teacher_features, labelled: int | None = None) -> LossContext:
        output = self.student(inputs)
        return LossContext(
            inputs=inputs,
            targets=targets,
            student=output,
            teacher=teacher_out,
            student_features=self.taps.collect() if self.taps else {},
            teacher_features=teacher_features,
            labelled=labelled,
        )

    def forward(self, inputs, targets, teacher_out=None, teacher_features=None, labelled: int | None = None):
        """The student's output and each term's value. ``labelled``: the batch's first rows that are
        labelled (the rest are transfer images): a term that reads the labels sees those alone."""
        ctx = self.context(inputs, targets, teacher_out, teacher_features or {}, labelled)
        own = ctx.labelled_rows()
        return ctx.student, [term(own if term.reads_labels() else ctx) for term in self.terms]

    def close(self) -> None:
        if self.taps is not None:
            self.taps.close()


def set_up_objective(student: nn.Module, terms: list[LossTerm], inputs: torch.Tensor, targets: Any,
                     teach: Teach, device: torch.device | None = None,
                     names: list[str] | None = None) -> StudentObjective:
    """The objective of a pair on ``device``, with the student's taps open and every term's
    ``setup`` called on one real batch (terms that own adapters size them here, before the
    optimizer exists; the adapters are then moved to ``device`` too). ``names``: the terms' keys
    (:func:`term_keys`), which an error in a term's taps or set-up names."""
    names = names or [type(term).__name__ for term in terms]
    check_taps(terms, names, student=student)
    student_paths, _ = tap_paths(terms)
    objective = StudentObjective(student, terms, student_paths)
    if device is not None:
        objective.to(device)
    with torch.no_grad():
        teacher_out, teacher_features = teach(inputs)
        _set_up_terms(terms, names, objective.context(inputs, targets, teacher_out, teacher_features))
    return objective.to(device) if device is not None else objective


def set_up_and_run(student: nn.Module, terms: list[LossTerm], inputs: torch.Tensor, targets: Any,
                   teacher_out: Any, teacher_features: dict[str, torch.Tensor], names: list[str] | None = None,
                   ) -> tuple[StudentObjective, list[torch.Tensor]]:
    """The objective of a pair set up on one batch, and its loss values on that batch, from one
    student forward pass (recorded for a backward): where :func:`set_up_objective` and a training
    step make two passes, a caller that needs both exactly once (the dry run) makes one."""
    names = names or [type(term).__name__ for term in terms]
    check_taps(terms, names, student=student)
    student_paths, _ = tap_paths(terms)
    objective = StudentObjective(student, terms, student_paths)
    probe = objective.context(inputs, targets, teacher_out, teacher_features)
    _set_up_terms(terms, names, probe)
    values = []
    for name, term in zip(names, terms):
        with blamed_on(name, term, probe):
            values.append(term(probe))
    return objective, values


def _set_up_terms(terms: list[LossTerm], names: list[str], probe: LossContext) -> None:
    # Setting up only reads shapes and makes adapters: nothing of it belongs to a backward pass.
    with torch.no_grad():
        for name, term in zip(names, terms):
            with blamed_on(name, term, probe):
                term.setup(probe)
