"""What identifies data and weights: sha256 over files, and a description of generated data."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from kdengine.plugins.components import Params


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_files(files: Iterable[Path | str], root: Path | str | None = None) -> dict[str, Any]:
    """A sha256 over the sorted relative paths, sizes and full contents of ``files``.

    Paths are taken relative to ``root`` (default: the folder the files share), so the same data
    in another place gives the same hash, and a renamed, added, removed or changed file a
    different one. Returns ``{"sha256", "files", "bytes", "root"}``.
    """
    paths = [Path(os.path.abspath(f)) for f in files]
    if root is None:
        root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")
    root = Path(os.path.abspath(root))
    entries = sorted({os.path.relpath(p, root).replace(os.sep, "/"): p for p in paths}.items())
    digest = hashlib.sha256()
    total = 0
    for relative, path in entries:
        try:
            size = path.stat().st_size
            digest.update(f"{relative}\0{size}\0".encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            total += size
        except OSError:
            digest.update(f"{relative}\0unreadable\0".encode())
    return {"sha256": digest.hexdigest(), "files": len(entries), "bytes": total, "root": str(root)}


def describe_params(name: str, params: "Params", keys: Iterable[str] | None = None) -> str:
    """``"name: key=value, ..."``: the fingerprint of generated or bundled data."""
    values = params.model_dump(mode="json")
    keys = list(keys) if keys is not None else list(values)
    return f"{name}: " + ", ".join(f"{k}={values[k]}" for k in keys)


def data_fingerprint(provider) -> dict | str | None:
    """The dataset's :meth:`~kdengine.plugins.components.DatasetProvider.fingerprint`; a failure to make
    one is recorded (and warned about) rather than stopping the run."""
    try:
        return provider.fingerprint()
    except Exception as exc:
        warnings.warn(f"the dataset's fingerprint failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
