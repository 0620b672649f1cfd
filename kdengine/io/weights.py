"""Weights: safetensors writes (atomic, see :mod:`kdengine.io.atomic`) and safe loads.

Anything read with ``torch.load`` uses ``weights_only=True``: a file carrying a
pickled code payload is refused.

Checkpoints from elsewhere load too: plain state dicts (``.pt``/``.pth``/``.bin``), bare or under
a ``state_dict``/``model``/``model_state_dict`` key (EMA weights first when the file has them, as
timm does), with the ``module.`` prefix of DataParallel/DDP or the ``_orig_mod.`` prefix of
``torch.compile``; and safetensors from timm or the Hugging Face Hub.

Downloaded pretrained weights and the offline rules are in :mod:`kdengine.io.hub`.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdengine.errors import CheckpointError
from kdengine.io.atomic import atomic_write

#: Keys under which training scripts nest the state dict, in order of preference (EMA weights
#: first, as timm's loader does; ``params_ema``/``params`` are BasicSR's, used by SR releases).
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "params_ema", "state_dict", "model_state_dict",
                   "model", "params")
#: Prefixes that wrappers add to every key: DataParallel/DDP, then torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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
            return strip_wrapper_prefixes(load_file(str(path)))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors"
            + (f" ({found.group(1)})" if found else "")
            + " (it could run code). Convert it to safetensors, or save only its state dict, "
            "from a trusted environment."
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict):
        obj = next((obj[key] for key in STATE_DICT_KEYS if isinstance(obj.get(key), dict)), obj)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = f" (its keys: {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, dict) else ""
        raise CheckpointError(f"{path}: does not hold a state dict of tensors{keys}; a wrapped state "
                              f"dict is found under one of: {', '.join(STATE_DICT_KEYS)}")
    return strip_wrapper_prefixes(obj)


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a prefix that every key carries because the model was wrapped when it was saved."""
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                changed = True
    return state


def load_weights(model: nn.Module, path: Path) -> None:
    """Load weights into ``model``; a mismatch names the file, the first missing and unexpected
    keys, and the shapes that differ."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
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
