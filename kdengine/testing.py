"""Contract checks for plugin authors: run them in your own test suite.

Each check builds the component the way the engine does, exercises the promise its base class
makes, and raises :class:`ContractError` (an ``AssertionError``, so pytest reports it as a plain
failure) with a message that says what broke::

    from kdengine import testing
    from kdengine_mine import MyLoss

    def test_my_loss_contract():
        testing.check_params(MyLoss, valid={"temperature": 2.0}, invalid=[{"temperature": -1}])
        testing.check_loss_term(MyLoss, {"temperature": 2.0}, testing.logits_context)

The checks are small on purpose: they use whatever tiny inputs you give them and run on the CPU.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from pydantic import ValidationError
from torch import nn

from kdengine.plugins.components import DataInfo, DatasetProvider, LossContext, LossTerm, Metric, ModelFactory
from kdengine.plugins.features import FeatureTaps
from kdengine.teacher.precision import InferenceSetting, TeacherRunner
from kdengine.train.objective import StudentObjective

__all__ = [
    "ContractError",
    "check_dataset",
    "check_loss_term",
    "check_metric",
    "check_model_factory",
    "check_params",
    "context_from_models",
    "logits_context",
    "registered",
]


def registered(kind: str, name: str):
    """The catalog's entry for ``name`` of ``kind`` (``"loss"``, ``"model"``, ...), plugins loaded
    afresh: a plugin package's test that its entry point registers what it should, under the
    namespaced name (``entry.cls``, ``entry.plugin``). Unknown names raise ``KDEngineError``."""
    from kdengine.plugins.catalog import get_catalog

    return get_catalog(refresh=True).entry(kind, name)


class ContractError(AssertionError):
    """A component does not keep the contract of its base class."""


def _fail(cls: type, message: str) -> None:
    raise ContractError(f"{cls.__module__}.{cls.__qualname__}: {message}")


# ---------------------------------------------------------------------------------------------
# params


def check_params(cls: type, valid: Mapping[str, Any], invalid: Iterable[Mapping[str, Any]] = ()) -> None:
    """``valid`` validates and builds the component; every dict in ``invalid`` is rejected.

    Also checks that unknown keys are rejected (a recipe typo must never pass silently).
    """
    params_model = getattr(cls, "Params", None)
    if params_model is None or not hasattr(params_model, "model_validate"):
        _fail(cls, "has no pydantic Params model")
    try:
        params_model.model_validate(dict(valid))
    except ValidationError as exc:
        _fail(cls, f"valid params {dict(valid)!r} were rejected: {exc}")
    try:
        cls(dict(valid))
    except Exception as exc:
        _fail(cls, f"cannot be constructed from valid params {dict(valid)!r}: {type(exc).__name__}: {exc}")
    for bad in invalid:
        try:
            params_model.model_validate(dict(bad))
        except ValidationError:
            continue
        _fail(cls, f"invalid params {dict(bad)!r} were accepted")
    typo = {**dict(valid), "surely_not_a_param": 1}
    try:
        params_model.model_validate(typo)
    except ValidationError:
        return
    _fail(cls, "accepts unknown keys; derive Params from kdengine.Params (extra='forbid')")


# ---------------------------------------------------------------------------------------------
# loss terms


def logits_context(term: LossTerm, batch: int = 4, classes: int = 5, seed: int = 0) -> LossContext:
    """A context with random student/teacher logits and class targets (for logit-based terms)."""
    generator = torch.Generator().manual_seed(seed)
    return LossContext(
        inputs=torch.randn(batch, 3, 8, 8, generator=generator),
        targets=torch.randint(0, classes, (batch,), generator=generator),
        student=torch.randn(batch, classes, generator=generator),
        teacher=torch.randn(batch, classes, generator=generator),
    )


def context_from_models(term: LossTerm, student: nn.Module, teacher: nn.Module | None,
                        inputs: torch.Tensor, targets: Any) -> LossContext:
    """Run real models with the term's feature taps open, as the engine does, and return the context.

    The teacher runs without gradients; the student's output and features keep their graph, so a
    check can follow the gradient back into the student's parameters.
    """
    # The engine's own code paths: the teacher's runner (frozen, its taps) and the objective's context.
    teacher_out, teacher_features = None, {}
    if teacher is not None:
        taps = FeatureTaps(teacher, term.teacher_taps(), role="teacher") if term.teacher_taps() else None
        runner = TeacherRunner(teacher, taps, InferenceSetting("no", channels_last=False))
        try:
            teacher_out, teacher_features = runner(inputs)
        finally:
            runner.close()
    objective = StudentObjective(student, [], term.student_taps())
    try:
        return objective.context(inputs, targets, teacher_out, teacher_features)
    finally:
        objective.close()


def _tracked(tensor: torch.Tensor) -> torch.Tensor:
    """Make a student tensor report its gradient after backward."""
    if not tensor.is_floating_point():
        return tensor
    if tensor.requires_grad:
        if not tensor.is_leaf:
            tensor.retain_grad()
        return tensor
    return tensor.detach().clone().requires_grad_(True)


def _has_signal(grad: torch.Tensor | None) -> bool:
    return grad is not None and bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


def check_loss_term(cls: type[LossTerm], params: Mapping[str, Any] | None,
                    ctx_factory: Callable[[LossTerm], LossContext]) -> torch.Tensor:
    """A loss term returns a finite scalar whose gradient reaches the student and its own adapters.

    ``ctx_factory(term)`` returns a :class:`LossContext` holding every feature the term taps (see
    :func:`logits_context` and :func:`context_from_models`). The check calls ``setup`` (where
    adapters are created), then ``forward``, then backpropagates, and requires:

    - a 0-dim, finite, floating-point value;
    - a non-zero finite gradient on the student's output or on one of its tapped features, and
      none flowing into the teacher's tensors (they are detached here, as in the engine);
    - a finite gradient on every trainable parameter the term owns (adapters, heads);
    - a term that declares ``needs_teacher = False`` also works with no teacher at all.

    Returns the loss value.
    """
    term = cls(dict(params or {}))
    ctx = ctx_factory(term)
    if not isinstance(ctx, LossContext):
        _fail(cls, f"ctx_factory returned {type(ctx).__name__}, not a LossContext")
    missing = [p for p in term.student_taps() if p not in ctx.student_features]
    missing += [p for p in term.teacher_taps() if p not in ctx.teacher_features]
    if missing:
        raise ContractError(f"ctx_factory gave no features for the taps {missing} that {cls.__name__} asks for")
    ctx.student = _tracked(ctx.student)
    ctx.student_features = {k: _tracked(v) for k, v in ctx.student_features.items()}
    if isinstance(ctx.teacher, torch.Tensor):
        ctx.teacher = ctx.teacher.detach()
    ctx.teacher_features = {k: v.detach() for k, v in ctx.teacher_features.items()}

    with torch.no_grad():
        term.setup(ctx)
    term.train()
    value = term(ctx)
    if not isinstance(value, torch.Tensor):
        _fail(cls, f"forward returned {type(value).__name__}, not a tensor")
    if value.dim() != 0:
        _fail(cls, f"forward returned shape {tuple(value.shape)}, not a scalar")
    if not value.is_floating_point() or not bool(torch.isfinite(value)):
        _fail(cls, f"forward returned a non-finite or non-float value: {value}")
    if not value.requires_grad:
        _fail(cls, "the loss has no gradient at all (is it detached from the student?)")
    value.backward()

    reached = [("output", ctx.student)] + [(f"feature '{k}'", v) for k, v in ctx.student_features.items()]
    if not any(_has_signal(t.grad) for _, t in reached if isinstance(t, torch.Tensor)):
        _fail(cls, "no gradient reaches the student's output or tapped features")
    for name, parameter in term.named_parameters():
        if parameter.requires_grad and not (parameter.grad is not None and bool(torch.isfinite(parameter.grad).all())):
            _fail(cls, f"parameter '{name}' of the term (created in setup?) gets no finite gradient")
        if parameter.requires_grad and not bool(parameter.grad.abs().sum() > 0):
            _fail(cls, f"parameter '{name}' of the term gets an all-zero gradient")

    if not cls.needs_teacher:
        bare = cls(dict(params or {}))
        no_teacher = LossContext(inputs=ctx.inputs, targets=ctx.targets, student=ctx.student.detach(),
                                 student_features={k: v.detach() for k, v in ctx.student_features.items()})
        try:
            with torch.no_grad():
                bare.setup(no_teacher)
                result = bare(no_teacher)
        except Exception as exc:
            _fail(cls, f"declares needs_teacher = False but fails without a teacher: {type(exc).__name__}: {exc}")
        if not bool(torch.isfinite(result)):
            _fail(cls, "declares needs_teacher = False but is not finite without a teacher")
    return value.detach()


# ---------------------------------------------------------------------------------------------
# datasets


def _check_item(cls: type, split: str, index: int, item: Any, info: DataInfo) -> None:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        _fail(cls, f"{split}[{index}] is {type(item).__name__}, not an (input, target) pair")
    inputs, target = item
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        _fail(cls, f"{split}[{index}] input is not a floating-point tensor")
    if inputs.dim() < 1 or inputs.shape[0] != info.in_channels:
        _fail(cls, f"{split}[{index}] input has shape {tuple(inputs.shape)}; info() declares "
                   f"{info.in_channels} channels first")
    if not bool(torch.isfinite(inputs).all()):
        _fail(cls, f"{split}[{index}] input has non-finite values")
    if info.num_classes:
        label = target.item() if isinstance(target, torch.Tensor) and target.numel() == 1 else target
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < info.num_classes:
            _fail(cls, f"{split}[{index}] target {target!r} is not a class index in [0, {info.num_classes})")


def check_dataset(cls: type[DatasetProvider], params: Mapping[str, Any] | None, items: int = 3) -> DataInfo:
    """``info()`` and ``check()`` work, the train, val and test splits are non-empty, and their first
    and last items are ``(tensor, target)`` pairs with the declared channels (and class indices in
    range); a batch of two collates (into a batch tensor, or a list for items of different sizes).
    Returns the DataInfo."""
    provider = cls(dict(params or {}))
    info = provider.info()
    if not isinstance(info, DataInfo):
        _fail(cls, f"info() returned {type(info).__name__}, not a DataInfo")
    provider.check()
    for split in ("train_set", "val_set", "test_set"):
        data = getattr(provider, split)()
        try:
            size = len(data)
        except TypeError:
            _fail(cls, f"{split}() has no length")
        if size == 0:
            _fail(cls, f"{split}() is empty")
        indices = sorted({*range(min(items, size)), size - 1})
        for index in indices:
            _check_item(cls, split, index, data[index], info)
        batch = [data[i] for i in range(min(2, size))]
        collate = provider.collate_fn() or torch.utils.data.default_collate
        inputs, _ = collate(batch)
        if len(inputs) != len(batch):
            _fail(cls, f"{split}: a collated batch of {len(batch)} has {len(inputs)} inputs")
    return info


# ---------------------------------------------------------------------------------------------
# metrics


def _values(cls: type[Metric], result: Any) -> dict[str, float]:
    if isinstance(result, Mapping):
        if cls.keys and set(result) != set(cls.keys):
            _fail(cls, f"compute() returned keys {sorted(result)}, but the class declares keys {list(cls.keys)}")
        return {k: float(v) for k, v in result.items()}
    if cls.keys:
        _fail(cls, f"declares keys {list(cls.keys)} but compute() returned a single value")
    if not isinstance(result, torch.Tensor) or result.numel() != 1:
        _fail(cls, f"compute() returned {type(result).__name__}, not a scalar tensor or a dict of them")
    return {"value": float(result)}


def _close(a: dict[str, float], b: dict[str, float], rtol: float, atol: float) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=rtol, abs_tol=atol) for k in a)


def check_metric(cls: type[Metric], params: Mapping[str, Any] | None, info: DataInfo,
                 batches: Sequence[tuple[torch.Tensor, Any]], rtol: float = 1e-5, atol: float = 1e-6) -> dict[str, float]:
    """A metric accumulated over ``batches`` equals one-shot ``compute`` on them all, and ``reset``
    forgets everything. ``batches`` are ``(student_output, target)`` pairs; give at least two, of
    different sizes, so averaging per-batch results would show. Returns the accumulated values."""
    if len(batches) < 2:
        raise ContractError("check_metric needs at least two batches")
    component = cls(dict(params or {}))
    metric = component.build(info)
    for outputs, targets in batches:
        metric.update(outputs, targets)
    accumulated = _values(cls, metric.compute())
    if not all(math.isfinite(v) for v in accumulated.values()):
        _fail(cls, f"compute() is not finite: {accumulated}")

    one_shot_metric = component.build(info)
    one_shot_metric.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    one_shot = _values(cls, one_shot_metric.compute())
    if not _close(accumulated, one_shot, rtol, atol):
        _fail(cls, f"accumulating {len(batches)} batches gives {accumulated}, computing on all at once gives {one_shot}")

    metric.reset()
    metric.update(*batches[-1])
    after_reset = _values(cls, metric.compute())
    fresh_metric = component.build(info)
    fresh_metric.update(*batches[-1])
    fresh = _values(cls, fresh_metric.compute())
    if not _close(after_reset, fresh, rtol, atol):
        _fail(cls, f"reset() does not forget earlier batches: {after_reset} after reset, {fresh} fresh")
    return accumulated


# ---------------------------------------------------------------------------------------------
# model factories


def check_model_factory(cls: type[ModelFactory], params: Mapping[str, Any] | None, info: DataInfo,
                        input_shape: Sequence[int]) -> nn.Module:
    """``build(info)`` returns an ``nn.Module`` that maps a batch of ``input_shape`` to a finite
    output with the same batch size (``(B, num_classes)`` for classification), trains (a gradient
    reaches its parameters), and whose weights saved by kdengine reload through ``load`` to the
    same outputs. Returns the built model."""
    from kdengine.io.weights import save_weights

    factory = cls(dict(params or {}))
    torch.manual_seed(0)
    model = factory.build(info)
    if not isinstance(model, nn.Module):
        _fail(cls, f"build() returned {type(model).__name__}, not an nn.Module")
    inputs = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    model.train()
    output = model(inputs)
    if not isinstance(output, torch.Tensor):
        _fail(cls, f"the model returned {type(output).__name__}, not a tensor")
    if output.shape[0] != inputs.shape[0]:
        _fail(cls, f"batch of {inputs.shape[0]} gave an output of shape {tuple(output.shape)}")
    if info.task == "classification" and info.num_classes and tuple(output.shape) != (inputs.shape[0], info.num_classes):
        _fail(cls, f"a classifier should return (batch, {info.num_classes}) logits, got {tuple(output.shape)}")
    if output.requires_grad:
        output.float().pow(2).mean().backward()
    if not any(_has_signal(p.grad) for p in model.parameters()):
        _fail(cls, "no gradient reaches the model's parameters")

    model.eval()
    with torch.no_grad():
        expected = model(inputs)
    if not bool(torch.isfinite(expected).all()):
        _fail(cls, "the model's output has non-finite values")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.safetensors"
        save_weights(model, path)
        reloaded = factory.load(path, info).eval()
        with torch.no_grad():
            again = reloaded(inputs)
    if not torch.allclose(expected, again, rtol=1e-5, atol=1e-6):
        _fail(cls, "weights saved and reloaded through load() give different outputs")
    return model
