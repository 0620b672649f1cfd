"""Activation checkpointing: ``train.activation_checkpointing = true``.

The forward pass keeps only the inputs of the checkpointed modules, and the backward pass
recomputes what lies inside them: less memory for activations, about one more forward pass of
compute, so a larger micro-batch fits under ``train.max_memory``. The gradients are the same.

Two ways in. ``train.checkpoint_modules`` names modules of the trained model by path
(``["features.3", "features.7"]``, as in ``kdengine layers``); each one's forward then runs under
``torch.utils.checkpoint`` (non-reentrant). BatchNorm layers inside such a module see every batch
twice, in the forward and in the recomputation; only the first pass updates their running
statistics, so the model trains exactly as without checkpointing. Without module paths, a model
with its own switch (timm's ``set_grad_checkpointing()``) uses that; timm's recomputation updates
BatchNorm running statistics a second time, which moves them towards recent batches about twice
as fast (name the modules instead where that matters).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from kdengine.errors import KDEngineError
from kdengine.recipe import TrainSpec


def checkpointed_modules(model: nn.Module, train: TrainSpec, source: str, described: str) -> list[nn.Module] | None:
    """The modules ``train`` asks to checkpoint in ``model`` ([] for none), or None when the model's
    own ``set_grad_checkpointing()`` is to be used; a recipe error when neither way exists."""
    if not train.activation_checkpointing:
        return []
    if not train.checkpoint_modules:
        if callable(getattr(model, "set_grad_checkpointing", None)):
            return None
        raise KDEngineError(
            f"{source}: train.activation_checkpointing: {described} has no set_grad_checkpointing(); name "
            "the modules to checkpoint in train.checkpoint_modules (module paths, e.g. "
            f"{_example_paths(model)}; `kdengine layers` lists them)")
    modules = []
    for path in train.checkpoint_modules:
        try:
            modules.append(model.get_submodule(path))
        except AttributeError:
            raise KDEngineError(
                f"{source}: train.checkpoint_modules: {described} has no module '{path}' (its modules "
                f"include {_example_paths(model)}; `kdengine layers` lists them all)") from None
    return modules


def apply_activation_checkpointing(model: nn.Module, train: TrainSpec, source: str, described: str) -> None:
    """Switch on the checkpointing that ``train`` asks for in ``model`` (in place)."""
    modules = checkpointed_modules(model, train, source, described)
    if modules is None:
        model.set_grad_checkpointing(True)
        return
    for module in modules:
        checkpoint_forward(module)


def checkpoint_forward(module: nn.Module) -> None:
    """Run ``module``'s forward under non-reentrant checkpointing whenever gradients are recorded
    (evaluation and inference run it plainly)."""
    forward = module.forward
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm)]

    def contexts():
        return contextlib.nullcontext(), _running_stats_frozen(norms)

    def checkpointed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    module.forward = checkpointed


@contextlib.contextmanager
def _running_stats_frozen(norms: list[_BatchNorm]) -> Iterator[None]:
    """The recomputation runs BatchNorm exactly as the forward did (the same operations, which
    checkpointing checks) but with a momentum of 0, so the running statistics stay where the
    forward left them; the batch count is put back too."""
    moving = [(m, m.momentum, m.num_batches_tracked.clone()) for m in norms
              if m.training and m.track_running_stats and m.num_batches_tracked is not None]
    for m, _, _ in moving:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in moving:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def _example_paths(model: nn.Module, shown: int = 4) -> str:
    """A few paths one level below the top container, e.g. ``features.1, features.2, ...``."""
    paths = [name for name, _ in model.named_modules() if name.count(".") == 1] or \
        [name for name, _ in model.named_children()]
    listed = ", ".join(f"'{p}'" for p in paths[:shown])
    return f"[{listed}{', ...' if len(paths) > shown else ''}]"
