"""What every stage of one run shares: the recipe, the Accelerator, the dataset and its splits,
the run folder, the scorer and the trackers."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from kdengine.errors import DataError, DataWarning, MissingSplitError, located
from kdengine.io.rundir import RunFolder
from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.components import DataInfo, DatasetProvider
from kdengine.recipe import Recipe, TrainSpec
from kdengine.reporting.tracking import RunTracking
from kdengine.teacher.replay import EpochSampler, SeededItems
from kdengine.train.evaluate import Scorer


@dataclass
class RunContext:
    """What every stage of one run shares."""

    recipe: Recipe
    seed: int
    accelerator: Accelerator
    provider: DatasetProvider
    info: DataInfo
    train_set: Any
    #: The split every choice during training is made on: val (or test, under
    #: ``train.monitor_split = "test"``).
    monitor_set: Any
    #: The split scored once at the end of each stage.
    test_set: Any
    folder: RunFolder | None
    progress: bool
    scorer: Scorer | None = None
    tracking: RunTracking = field(default_factory=RunTracking)
    #: ``[data.transfer]``'s rows of every step, for the taught stages (None: no transfer set).
    transfer: Any = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def train_loader(self, train: TrainSpec) -> DataLoader:
        # Items are loaded under the seed of their (epoch, index) key: augmentation is replayable.
        return DataLoader(
            SeededItems(self.train_set, self.seed), batch_size=train.batch_size,
            sampler=EpochSampler(len(self.train_set), self.seed),
            drop_last=len(self.train_set) > train.batch_size, num_workers=train.num_workers,
            collate_fn=self.provider.collate_fn(), persistent_workers=train.num_workers > 0,
        )

    def eval_loader(self, data: Any, train: TrainSpec) -> DataLoader:
        return eval_loader(self.provider, data, train)


def steps_per_epoch(rows: int, train: TrainSpec) -> int:
    """Optimizer steps in an epoch of ``rows`` train rows: the batches of ``train_loader`` (which
    drops a last partial batch when there is more than one), at most ``train.max_steps_per_epoch``."""
    batches = rows // train.batch_size if rows > train.batch_size else min(rows, 1)
    return min(batches, train.max_steps_per_epoch or batches)


def step_sizes(rows: int, train: TrainSpec) -> list[int]:
    """Rows of each step of an epoch, in order."""
    return [min(train.batch_size, rows - s * train.batch_size) for s in range(steps_per_epoch(rows, train))]


def eval_loader(provider: DatasetProvider, data: Any, train: TrainSpec) -> DataLoader:
    """A val or test split in order, once, batched by ``train.eval_batch_size``."""
    return DataLoader(data, batch_size=train.eval_batch_size or train.batch_size, shuffle=False,
                      num_workers=train.num_workers, collate_fn=provider.collate_fn())


def open_dataset(recipe: Recipe) -> tuple[DatasetProvider, DataInfo]:
    """The recipe's dataset provider, checked (missing files are reported now), and its info."""
    with located(recipe.source, "data"):
        provider = get_catalog().get("dataset", recipe.data.name)(recipe.data.params)
        provider.on_bad_sample = recipe.data.on_bad_sample
        provider.check()
        return provider, provider.info()


def split_of(recipe: Recipe, provider: DatasetProvider, split: str) -> Any:
    """One split of the recipe's dataset; a dataset without a val split is a recipe error that
    names the dataset and the field, raised before anything trains."""
    with located(recipe.source, "data"):
        try:
            data = getattr(provider, f"{split}_set")()
        except MissingSplitError as exc:
            field_name = "train.monitor_split" if split == "val" else "data"
            raise DataError(
                f"{recipe.source}: {field_name}: dataset '{recipe.data.name}' has no {split} split ({exc}); "
                "give the dataset one, or set train.monitor_split = \"test\" for a quick look (the tables "
                "then say that the test split chose the epochs)") from None
        if len(data) == 0:
            skipped = provider.skipped_samples()
            note = f" ({len(skipped)} bad samples were skipped)" if skipped else ""
            raise DataError(f"the {split} split of '{recipe.data.name}' is empty{note}")
        return data


def open_splits(recipe: Recipe, provider: DatasetProvider) -> tuple[Any, Any, Any]:
    """The train split, the split that monitors training (val, or test under
    ``train.monitor_split = "test"``) and the test split."""
    train_set = split_of(recipe, provider, "train")
    test_set = split_of(recipe, provider, "test")
    monitor_set = test_set if recipe.train.monitor_split == "test" else split_of(recipe, provider, "val")
    return train_set, monitor_set, test_set


def warn_skipped(recipe: Recipe, skipped: list[str], shown: int = 5) -> None:
    """The warning at the start of a run that left bad samples out (``data.on_bad_sample``)."""
    listed = "; ".join(skipped[:shown])
    if len(skipped) > shown:
        listed += f"; and {len(skipped) - shown} more (see results.json)"
    warnings.warn(f"{recipe.source}: data.on_bad_sample = \"skip\": left out {len(skipped)} bad "
                  f"sample(s): {listed}", DataWarning, stacklevel=2)
