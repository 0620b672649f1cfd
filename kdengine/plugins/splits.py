"""Seeded hold-outs: how a dataset without an official validation split makes one.

A provider calls :func:`holdout` on the samples of its training data (indices, file paths, ...)
with a seed of its own (a data parameter, fixed across run seeds), so the validation split is
disjoint from train, and the same on every run and machine.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def holdout(items: Sequence[T], count: int, seed: int) -> tuple[list[T], list[T]]:
    """``(kept, held)``: ``count`` of ``items`` drawn at random under ``seed``, and the others.

    Both lists keep the order of ``items``. The draw depends only on ``len(items)``, ``count``
    and ``seed`` (numpy's PCG64 generator), never on the run seed.
    """
    if not 0 <= count <= len(items):
        raise ValueError(f"cannot hold out {count} of {len(items)} items")
    chosen = np.zeros(len(items), dtype=bool)
    chosen[np.random.default_rng(seed).permutation(len(items))[:count]] = True
    kept = [item for item, held in zip(items, chosen) if not held]
    held = [item for item, held in zip(items, chosen) if held]
    return kept, held


def fraction_count(total: int, fraction: float) -> int:
    """How many of ``total`` samples ``fraction`` holds out: rounded, and at least one."""
    return max(1, round(total * fraction))
