"""Exact resume: everything a stage needs to continue as if it had never stopped.

At the end of every epoch the main process writes ``checkpoints/<stage>/state.pt`` atomically:
the student and its loss terms' adapters and buffers (CRD's queue of negatives), the optimizer,
the schedule, the fp16 gradient scaler, the RNG states of Python, NumPy and torch, the epoch
reached, and the stage's record so far. The data order depends only on the seed and the epoch
(:class:`kdengine.teacher.replay.EpochSampler`), so a resumed stage sees the same batches. The file
holds tensors and plain values only and is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdengine.io.atomic import atomic_write
from kdengine.errors import CheckpointError
from kdengine.io.results import StageResult


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingState:
    epoch: int
    objective: dict[str, torch.Tensor]
    optimizer: dict
    schedule: dict
    rng: dict
    best_value: float | None
    result: StageResult
    #: The fp16 gradient scaler's state (its scale and growth count); None in other precisions.
    scaler: dict | None = None
    #: Every process's generators, in process order, under several processes (``rng`` is the
    #: first's): each process resumes with its own (its dropout draws, its own device's CUDA state).
    rngs: list[dict] | None = None

    def rng_for(self, process: int, processes: int) -> dict:
        """The generators process ``process`` of ``processes`` resumes with: its own where the
        state holds one per process of a run of that size, the first process's otherwise."""
        if self.rngs is not None and len(self.rngs) == processes:
            return self.rngs[process]
        return self.rng

    def save(self, path: Path) -> None:
        payload = {
            "epoch": self.epoch,
            "objective": {k: v.detach().cpu().clone() for k, v in self.objective.items()},
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "rng": self.rng,
            "best_value": self.best_value,
            "result": self.result.model_dump_json(),
            "scaler": self.scaler,
            "rngs": self.rngs,
        }
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: Path) -> "TrainingState":
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: unreadable training state ({type(exc).__name__}: {exc})") from None
        return cls(
            epoch=payload["epoch"], objective=payload["objective"], optimizer=payload["optimizer"],
            schedule=payload["schedule"], rng=payload["rng"], best_value=payload["best_value"],
            result=StageResult.model_validate_json(payload["result"]), scaler=payload.get("scaler"),
            rngs=payload.get("rngs"),
        )
