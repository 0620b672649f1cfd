"""``train.compile = true``: torch.compile the trained model and the frozen teacher.

The trained model's ``forward`` is replaced by its compiled version on the instance, so the model
stays the same module: its parameters, its ``state_dict`` keys (no ``_orig_mod.`` prefix in a
checkpoint), its hooks (feature taps) and the optimizer's references are untouched. The teacher
is run through a compiled wrapper that its runner holds (``torch.compile(module)``); it is never
saved.

torch.compile compiles lazily, at the first call, and on a machine without a working C++
compiler (the CPU backend needs one) that first call fails deep inside Inductor. Every compiled
call is therefore guarded: a failure of the compiler becomes one ``KDEngineError`` that names
``train.compile`` and the reason, instead of a traceback.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from kdengine.errors import KDEngineError


def _compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says torch.compile could not compile (a missing C++ compiler, a backend or
    tracing failure), as opposed to an error of the model itself that tracing ran into (that one
    is raised as it is, as it would be without compiling)."""
    from torch._dynamo import exc as dynamo

    return isinstance(exc, dynamo.TorchDynamoException) and not isinstance(exc, dynamo.TorchRuntimeError)


def _reason(exc: BaseException) -> str:
    """The first line of the innermost error: a backend failure wraps the compiler's own."""
    inner = getattr(exc, "inner_exception", None)
    if isinstance(inner, BaseException):
        return _reason(inner)
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip()[:300]}" if lines else type(exc).__name__


def _problem(source: str, what: str, exc: BaseException) -> KDEngineError:
    return KDEngineError(f"{source}: train.compile: torch.compile could not compile {what} ({_reason(exc)}); "
                         "set train.compile = false")


def _guarded(compiled: Callable, source: str, what: str) -> Callable:
    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:
            if _compile_failure(exc):
                raise _problem(source, what, exc) from exc
            raise
    return call


def _compile(target: Callable, source: str, what: str) -> Callable:
    try:
        compiled = torch.compile(target)
    except Exception as exc:  # e.g. a Python version or platform torch.compile does not support
        raise _problem(source, what, exc) from exc
    return _guarded(compiled, source, what)


def compile_in_place(model: nn.Module, source: str, what: str) -> nn.Module:
    """Compile ``model``'s forward on the instance: the module, its parameters and its state_dict
    keys stay as they are. ``source`` (the recipe file) and ``what`` (e.g. "the student
    torchvision(model=mobilenet_v2)") name it in an error."""
    model.forward = _compile(model.forward, source, what)
    return model


def compiled_call(model: nn.Module, source: str, what: str) -> Callable:
    """A compiled callable that runs ``model`` (the module itself is left as it is)."""
    return _compile(model, source, what)
