"""The transfer set (``[data.transfer]``): images the teacher alone labels, added to every step of
the taught stages beside the labelled batch.

A step's transfer rows are a pure function of (seed, epoch, step), like the labelled rows and their
augmentation (:mod:`kdengine.teacher.replay`), so the teacher-output cache replays them exactly and
a resumed run sees the same ones. Over an epoch the set is drawn in a shuffled order, again and
again when an epoch needs more rows than it holds; each draw of an image is augmented under a seed
of its own (its random crop, its flip), so a long schedule sees many views of few images.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from kdengine.errors import DataError, KDEngineError, located
from kdengine.io.fingerprint import file_sha256
from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.components import DatasetProvider
from kdengine.recipe import Recipe
from kdengine.teacher.replay import seeded, stream_seed


class TransferRows:
    """The transfer rows of every step: ``rows`` of them, shared out over the processes."""

    def __init__(self, data: Any, seed: int, rows: int, collate: Callable | None, name: str):
        if len(data) == 0:
            raise DataError(f"the transfer set '{name}' has no images")
        self.data, self.seed, self.rows, self.name = data, seed, rows, name
        self.collate = collate or torch.utils.data.default_collate
        #: What identifies the transfer images (its provider's fingerprint), for the cache key.
        self.fingerprint: Any = None

    @lru_cache(maxsize=8)
    def _order(self, epoch: int, lap: int) -> list[int]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, 4, epoch, lap))
        return torch.randperm(len(self.data), generator=generator).tolist()

    def draws(self, epoch: int, step: int) -> list[tuple[int, int]]:
        """The step's (lap, index) draws, all processes' rows in order."""
        out = []
        for k in range(step * self.rows, (step + 1) * self.rows):
            lap, at = divmod(k, len(self.data))
            out.append((lap, self._order(epoch, lap)[at]))
        return out

    def batch(self, epoch: int, step: int, process: int = 0, processes: int = 1) -> torch.Tensor:
        """This process's share of the step's transfer images, as one input tensor."""
        share = self.rows // processes
        items = []
        for lap, index in self.draws(epoch, step)[process * share:(process + 1) * share]:
            with seeded(stream_seed(self.seed, 3, epoch, lap, index)):
                items.append(self.data[index])
        inputs, _ = self.collate(items)
        return inputs

    def key(self) -> dict:
        """The cache key's part for the transfer rows: which images, how many per step."""
        return {"name": self.name, "rows": self.rows, "images": len(self.data), "fingerprint": self.fingerprint}


def open_transfer(recipe: Recipe, provider: DatasetProvider, seed: int) -> TransferRows | None:
    """The recipe's transfer set (None without one), checked: its dataset opens, it holds images,
    and none of them is a val or test image of the recipe's dataset."""
    spec = recipe.data.transfer
    if spec is None:
        return None
    rows = spec.rows(recipe.train.batch_size)
    with located(recipe.source, "data.transfer"):
        transfer = get_catalog().get("dataset", spec.name)(spec.params)
        transfer.on_bad_sample = recipe.data.on_bad_sample
        transfer.check()
        data = transfer.train_set()  # an empty one is refused by TransferRows, below
        if transfer.info().task != provider.info().task:
            raise KDEngineError(f"'{spec.name}' is a {transfer.info().task} dataset; the recipe's "
                                f"'{recipe.data.name}' is a {provider.info().task} one")
        refuse_overlap(transfer.split_files("train"), provider, spec.name, recipe.data.name)
        rows_of = TransferRows(data, seed, rows, transfer.collate_fn(), spec.name)
        rows_of.fingerprint = transfer.fingerprint()
        return rows_of


def refuse_overlap(transfer_files: list[Path] | None, provider: DatasetProvider, transfer: str, dataset: str) -> None:
    """A transfer image that is a val or test image (the same file, or a copy of it) would let the
    teacher's view of the evaluation images into training: an error naming both files."""
    if not transfer_files:
        return
    for split in ("val", "test"):
        held_out = provider.split_files(split) or []
        by_content = {file_sha256(path): path for path in held_out}
        for path in transfer_files:
            twin = by_content.get(file_sha256(path))
            if twin is not None:
                raise DataError(f"transfer image {path} is the {split} image {twin} of '{dataset}' "
                                f"(same content); a transfer set must hold no val or test image")
