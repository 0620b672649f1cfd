"""A seeded augmentation stream: every random draw of training augmentation is a pure function of
(seed, epoch, sample) for per-item augmentation and of (seed, epoch, step, process) for batched
augmentation.

This is what lets the teacher-output cache replay a student's augmented batches exactly (the cache
is built by drawing the same stream), and it makes a resumed run see the same augmented batches as
an uninterrupted one. Augmentation must draw from torch's random generator (``torch.rand``,
``torch.randint``, torchvision transforms); draws from Python's ``random`` or NumPy's global
generator are not replayed, which :func:`check_replayable` detects.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import Dataset, Sampler

_MASK = (1 << 63) - 1


def stream_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64 steps; distinct tuples give unrelated seeds)."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 29
    return state & _MASK


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Draw from torch's generators (CPU, and ``device``'s when it is an accelerator) seeded with
    ``seed``; the previous generator states are restored afterwards."""
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for index in devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


class EpochSampler(Sampler):
    """A shuffled order that is a pure function of (seed, epoch): reproducible after a restart.

    It yields ``(epoch, index)`` keys, read by :class:`SeededItems`, so that each item's random
    augmentation is seeded by its own key whatever process or worker loads it.
    """

    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.length, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, i) for i in self.order(epoch)])

    def __len__(self) -> int:
        return self.length


class SeededItems(Dataset):
    """A training split whose items are loaded under the seed of their ``(epoch, index)`` key."""

    def __init__(self, dataset: Any, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with seeded(stream_seed(self.seed, 1, epoch, index)):
            return self.dataset[index]


class BatchAugmentStream:
    """``provider.batch_augment`` under the seed of (seed, epoch, step, process), and
    ``provider.transfer_augment`` for the step's transfer rows under a stream of its own (so that
    adding a transfer set leaves the labelled rows' augmentation as it was)."""

    def __init__(self, augment: Callable, seed: int, device: torch.device,
                 transfer_augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.augment = augment
        self.transfer_augment = transfer_augment
        self.seed = seed
        self.device = device

    def __call__(self, inputs: Any, targets: Any, *, epoch: int, step: int, process: int = 0) -> tuple[Any, Any]:
        with seeded(stream_seed(self.seed, 2, epoch, step, process), self.device):
            return self.augment(inputs, targets)

    def transfer(self, inputs: torch.Tensor, *, epoch: int, step: int, process: int = 0) -> torch.Tensor:
        """This process's transfer rows of a step, augmented as a batch (unchanged without a
        ``transfer_augment``)."""
        if self.transfer_augment is None:
            return inputs
        with seeded(stream_seed(self.seed, 5, epoch, step, process), self.device):
            return self.transfer_augment(inputs)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def check_replayable(load_batch: Callable[[], tuple[Any, Any]], augment: BatchAugmentStream) -> str | None:
    """Load and augment the same batch twice under the same seeds; a difference means the dataset
    or its augmentation draws from a generator the stream does not seed. Returns the problem, or
    None when the two draws are identical."""
    first = augment(*load_batch(), epoch=1, step=0)
    # Move the unseeded generators on, as training would between two visits of the same batch.
    import random

    import numpy as np

    random.random(), np.random.random()
    second = augment(*load_batch(), epoch=1, step=0)
    if _same(first[0], second[0]) and _same(first[1], second[1]):
        return None
    return ("its augmentation draws from a random generator that kdengine does not seed (Python's "
            "random or NumPy's global generator?); draw from torch's generator (torch.rand, "
            "torch.randint, torchvision transforms) so cached teacher outputs match the student's batches")
