"""Weights: safetensors writes (atomic, see :mod:`kdengine.io.atomic`) and safe loads.

 Anything read with ``torch.load`` uses ``weights_only=True``: a file carrying a
pickled code payload is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdengine.errors import CheckpointError
from kdengine.io.atomic import atomic_write


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A safetensors-ready copy of the model's state (contiguous, CPU, no shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = state_tensors(model)
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a ``torch.save`` file, refusing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors "
            "(it could run code). Convert it to safetensors from a trusted environment."
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model", "params_ema", "params"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return obj


def load_weights(model: nn.Module, path: Path) -> None:
    """Load weights into ``model``; a mismatch names the file and the first differing keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {'; '.join(wrong_shape[:3])})")
        raise CheckpointError(
            f"{path}: checkpoint does not match the architecture: " + ", ".join(parts)
        )
    model.load_state_dict(state)
