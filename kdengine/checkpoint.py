"""Atomic checkpoint writes, safe loads, and the offline rules for downloaded weights.

Weights are stored as safetensors. Every write goes to a temporary file in the same folder, is
flushed and fsynced, then renamed over the target, so a kill during a write leaves the previous
file intact. Anything read with ``torch.load`` uses ``weights_only=True``: a file carrying a
pickled code payload is refused.

Checkpoints from elsewhere load too: plain state dicts (``.pt``/``.pth``/``.bin``), bare or under
a ``state_dict``/``model``/``model_state_dict`` key (EMA weights first when the file has them, as
timm does), with the ``module.`` prefix of DataParallel/DDP or the ``_orig_mod.`` prefix of
``torch.compile``; and safetensors from timm or the Hugging Face Hub.

Pretrained weights that model factories download (Hugging Face Hub, ``torch.hub``) obey
``HF_HUB_OFFLINE=1``: kdengine applies it to every download, not only the Hub's, so that an
offline run stops at once with a :class:`WeightsUnavailableError` instead of waiting on network
timeouts.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdengine.errors import CheckpointError

#: Keys under which training scripts nest the state dict, in order of preference (EMA weights
#: first, as timm's loader does; ``params_ema``/``params`` are BasicSR's, used by SR releases).
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "params_ema", "state_dict", "model_state_dict",
                   "model", "params")
#: Prefixes that wrappers add to every key: DataParallel/DDP, then torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class WeightsUnavailableError(CheckpointError):
    """Pretrained weights were asked for but are neither cached locally nor downloadable."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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


# ------------------------------------------------------------------ downloaded pretrained weights


def downloads_forbidden() -> bool:
    """True under ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), read now and as the Hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


@contextlib.contextmanager
def hub_offline_from_env() -> Iterator[None]:
    """Honour ``HF_HUB_OFFLINE`` set after huggingface_hub was imported.

    huggingface_hub reads the variable once, at import; without this, a process that sets it
    later (a test, a notebook) still makes network calls and waits through their retries.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm and smp depend on it
        yield
        return
    before = constants.HF_HUB_OFFLINE
    if downloads_forbidden():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_cache_dir() -> str:
    """Where the Hugging Face Hub caches downloads (``HF_HUB_CACHE``, by default ``$HF_HOME/hub``)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return "$HF_HOME/hub"
    return str(constants.HF_HUB_CACHE)


def torch_hub_cached_file(url: str) -> Path:
    """The file ``torch.hub.load_state_dict_from_url(url)`` reads when it has been downloaded before
    (under ``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def download_errors() -> tuple[type[BaseException], ...]:
    """What a failed or forbidden download raises: OSError covers urllib, missing cache files and
    the Hub's HTTP and offline errors; the Hub's EntryNotFoundError is not an OSError."""
    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:  # pragma: no cover
        return (OSError,)
    return (OSError, EntryNotFoundError)
