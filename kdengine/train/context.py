"""What every stage of one run shares, and the dataset it reads."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from kdengine.errors import DataWarning, located
from kdengine.io.rundir import RunFolder
from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.components import DataInfo, DatasetProvider
from kdengine.recipe import Recipe, TrainSpec
from kdengine.reporting.tracking import RunTracking
from kdengine.teacher.replay import EpochSampler, SeededItems


@dataclass
class RunContext:
    """What every stage of one run shares."""

    recipe: Recipe
    seed: int
    accelerator: Accelerator
    provider: DatasetProvider
    info: DataInfo
    train_set: Any
    eval_set: Any
    folder: RunFolder
    progress: bool
    metric_objects: list = field(default_factory=list)
    tracking: RunTracking = field(default_factory=RunTracking)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def loaders(self, train: TrainSpec) -> tuple[DataLoader, DataLoader]:
        collate = self.provider.collate_fn()
        # Items are loaded under the seed of their (epoch, index) key: augmentation is replayable.
        train_loader = DataLoader(
            SeededItems(self.train_set, self.seed), batch_size=train.batch_size,
            sampler=EpochSampler(len(self.train_set), self.seed),
            drop_last=len(self.train_set) > train.batch_size, num_workers=train.num_workers,
            collate_fn=collate, persistent_workers=train.num_workers > 0,
        )
        eval_loader = DataLoader(
            self.eval_set, batch_size=train.eval_batch_size or train.batch_size, shuffle=False,
            num_workers=train.num_workers, collate_fn=collate,
        )
        return train_loader, eval_loader


def open_dataset(recipe: Recipe) -> tuple[DatasetProvider, DataInfo]:
    """The recipe's dataset provider, checked (missing files are reported now), and its info."""
    with located(recipe.source, "data"):
        provider = get_catalog().get("dataset", recipe.data.name)(recipe.data.params)
        provider.on_bad_sample = recipe.data.on_bad_sample
        provider.check()
        return provider, provider.info()


def warn_skipped(recipe: Recipe, skipped: list[str], shown: int = 5) -> None:
    """The warning at the start of a run that left bad samples out (``data.on_bad_sample``)."""
    listed = "; ".join(skipped[:shown])
    if len(skipped) > shown:
        listed += f"; and {len(skipped) - shown} more (see results.json)"
    warnings.warn(f"{recipe.source}: data.on_bad_sample = \"skip\": left out {len(skipped)} bad "
                  f"sample(s): {listed}", DataWarning, stacklevel=2)
