"""What couples the samples of a batch, so that micro-batches (``train.max_memory``) do not give
the whole batch's gradient.

Gradient accumulation over micro-batches equals one pass over the whole batch only when the loss
is a mean of per-sample values. A loss term that compares the samples of the batch with each
other (CRD's in-batch negatives, DIST's correlations across the batch: ``LossTerm.per_sample =
False``) and BatchNorm, which normalises with the statistics of the rows it is given (and keeps
running statistics of them), see each micro-batch instead. Training still works, but the user is
told, in ``kdengine validate``, on the console and in the results.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdengine.plugins.components import LossTerm


def batch_coupled(model: nn.Module, terms: list[LossTerm], term_names: list[str]) -> list[str]:
    """The loss terms (by recipe name) that are not per-sample, and the model's BatchNorm layers."""
    coupled = [name for name, term in zip(term_names, terms) if not type(term).per_sample]
    norms = sum(isinstance(m, _BatchNorm) for m in model.modules())
    if norms:
        coupled.append(f"BatchNorm ({norms} layer{'s' if norms > 1 else ''})")
    return coupled


def coupling_note(coupled: list[str]) -> str:
    """One sentence saying what sees the micro-batches instead of the whole batch."""
    names = coupled[0] if len(coupled) == 1 else ", ".join(coupled[:-1]) + " and " + coupled[-1]
    verb = "sees" if len(coupled) == 1 else "see"
    return (f"{names} {verb} each micro-batch, not the whole batch (batch statistics), "
            "so the gradient is not the whole batch's")
