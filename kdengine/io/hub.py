"""Pretrained weights that model factories download (Hugging Face Hub, ``torch.hub``) and the
offline rule: ``HF_HUB_OFFLINE=1`` applies to every download, not only the Hub's, so that an
offline run stops at once with a :class:`~kdengine.errors.WeightsUnavailableError` instead of
waiting on network timeouts."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import torch

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
