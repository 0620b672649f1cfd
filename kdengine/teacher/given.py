"""A teacher the run does not train: weights from ``teacher.checkpoint``, or the model exactly as
its factory delivers it (``teacher.train = false``: pretrained weights, or weights a plugin
bundles with its model).

A delivered teacher is built under the run's seed, on a generator of its own: whatever the
factory initialises at random (a classifier head resized for the dataset's classes) comes out
the same every time the run builds it (for evaluation, for each student, after a resume), and
the run's own random stream does not move.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdengine.errors import CheckpointError, located
from kdengine.plugins.components import DataInfo, ModelFactory
from kdengine.recipe import Recipe


def load_teacher_checkpoint(recipe: Recipe, factory: ModelFactory, info: DataInfo) -> nn.Module | None:
    """The teacher from ``teacher.checkpoint``, or None when the recipe gives none."""
    if recipe.teacher.checkpoint is None:
        return None
    path = Path(recipe.teacher.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{recipe.source}: teacher.checkpoint: file not found: {path}")
    with located(recipe.source, "teacher.checkpoint"):
        return factory.load(path, info)


def delivered_teacher(recipe: Recipe, factory: ModelFactory, info: DataInfo) -> nn.Module:
    """The teacher as its factory builds it, the same on every call for one seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.run.seed)
        with located(recipe.source, "teacher"):
            return factory.build(info)


def given_teacher(recipe: Recipe, factory: ModelFactory, info: DataInfo) -> nn.Module | None:
    """The teacher when the run does not train it (a checkpoint, or ``train = false``); None when
    the run trains it."""
    if recipe.teacher.checkpoint is not None:
        return load_teacher_checkpoint(recipe, factory, info)
    if recipe.teacher.train is False:
        return delivered_teacher(recipe, factory, info)
    return None
