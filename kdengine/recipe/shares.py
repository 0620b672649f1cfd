"""How the loss terms with ``weight = "auto"`` divide a stage's gradient between them: each auto
term's share, and the one rule that can make a division impossible.

The shares are fractions of the stage's total weighted gradient norm. Terms with a number as
their weight keep it, and the auto terms take the rest of the total: with fixed terms present
the auto shares must leave them something (sum below 1). When every term is auto the shares are
relative: they are normalised to sum to 1. The measurement itself is
:mod:`kdengine.train.balance`.
"""

from __future__ import annotations

from typing import Sequence

from kdengine.recipe.models import LossSpec

AUTO = "auto"


def stage_shares(specs: Sequence[LossSpec]) -> list[float | None]:
    """Each term's share of the stage's total weighted gradient norm, None for a fixed weight.

    An auto term without a ``share`` gets 1 / (the number of terms in the stage); when every term
    is auto, the shares are normalised to sum to 1.
    """
    default = 1.0 / len(specs)
    shares = [(spec.share or default) if spec.weight == AUTO else None for spec in specs]
    if all(share is not None for share in shares):
        total = sum(shares)
        shares = [share / total for share in shares]
    return shares


def shares_problem(specs: Sequence[LossSpec], labels: Sequence[str], context: str = "") -> str | None:
    """Why the auto terms of a stage cannot have their shares (their shares leave the fixed terms
    nothing), naming the field; None when they can. ``labels`` name the terms (``loss[1]``);
    ``context`` says which stage's terms these are."""
    shares = stage_shares(specs)
    auto = [i for i, share in enumerate(shares) if share is not None]
    fixed = [i for i, share in enumerate(shares) if share is None]
    if not auto or not fixed:
        return None
    total = sum(shares[i] for i in auto)
    if total < 1.0 - 1e-9:
        return None
    given = [i for i in auto if specs[i].share is not None]
    field = f"{labels[given[0]]}.share" if given else f"{labels[auto[0]]}.weight"
    parts = ", ".join(f"{labels[i]} {shares[i]:.3g}{'' if specs[i].share is not None else ' (default)'}"
                      for i in auto)
    return (f"{field}: the shares of the terms with weight = \"auto\"{context} sum to {total:.3g} ({parts}); "
            f"with fixed-weight terms beside them ({', '.join(labels[i] for i in fixed)}) they must sum to "
            "less than 1, the rest of the gradient being the fixed terms'")
