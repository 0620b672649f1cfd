"""The teacher-output cache: the frozen teacher's outputs on the student's augmented batches,
computed once, stored compactly on disk and memory-mapped, so that students train without the
teacher in memory.

A cache folder holds, for one teacher and one student data stream, one sub-folder per epoch::

    <cache root>/<key>/
        meta.json              what the key was made of, shapes, dtype
        epoch-0001/output.npy  the teacher's output for every training row of epoch 1
        epoch-0001/feat-0.npy  the tapped teacher features the loss terms need (when any)
        ...

With ``teacher.cache_topk`` an epoch holds the top-k logits, their classes and each row's
log-sum-exp instead of ``output.npy`` (:mod:`kdengine.teacher.topk`).

Rows follow the student's batches: step ``s`` of an epoch covers rows ``offsets[s]`` to
``offsets[s + 1]``; under several processes each process reads its contiguous share of the step.
The student's data order and augmentation are pure functions of (seed, epoch, sample, step,
process) (:mod:`kdengine.teacher.replay`): the cache is built by drawing the same stream, so the cached
outputs match the batches the student sees. The key (:mod:`kdengine.teacher.keys`) holds everything
that fixes those outputs, the batch layout and storage dtype included; a different key is a
different folder, an existing folder is compared with the key in full, and several students (with
the same data stream) reuse one cache. Epochs are written one
at a time to a temporary folder and renamed into place: an interrupted build leaves no half epoch.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from kdengine.io.atomic import atomic_write_text
from kdengine.errors import KDEngineError
from kdengine.teacher import topk
from kdengine.teacher.keys import CacheKey

#: The layout of a cache folder (the key's own format is :data:`kdengine.teacher.keys.FORMAT`).
FORMAT = 2
STORAGE = {"float16": (torch.float16, np.float16), "bfloat16": (torch.bfloat16, np.int16),
           "float32": (torch.float32, np.float32)}


def tensor_digest(model: nn.Module) -> str:
    """sha256 over a model's parameters and buffers (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        # reshape first: a 0-d tensor (BatchNorm's num_batches_tracked) has no byte view of its own
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class Layout:
    """How an epoch's rows are split into steps and processes."""

    #: Rows of each step (the global batch), in order.
    sizes: tuple[int, ...]
    num_processes: int

    @property
    def rows(self) -> int:
        return sum(self.sizes)

    def offset(self, step: int) -> int:
        return sum(self.sizes[:step])

    def share(self, step: int, process: int) -> tuple[int, int]:
        """Rows of ``step`` that ``process`` trains on (Accelerate's split_batches: contiguous
        equal shares of the global batch)."""
        size = self.sizes[step]
        per = size // self.num_processes
        start = self.offset(step) + process * per
        return start, start + per


def stored_key(key: CacheKey, layout: Layout, dtype: str) -> CacheKey:
    """The whole key of a cache folder: what fixes the teacher's outputs (``key``), and how they
    are stored (``dtype``) and laid out over the steps and processes of an epoch."""
    return key.with_parts(dtype=dtype, layout={"sizes": list(layout.sizes), "num_processes": layout.num_processes})


def cache_folder(root: Path, key: CacheKey, layout: Layout, dtype: str) -> Path:
    """Where the cache for ``key``, laid out as ``layout`` and stored in ``dtype``, lives under ``root``."""
    return Path(root) / stored_key(key, layout, dtype).digest()


def epochs_present(folder: Path, epochs: int) -> int:
    """How many of epochs 1 to ``epochs`` a cache folder holds complete (0 for no folder)."""
    return sum((folder / f"epoch-{e:04d}" / "done").is_file() for e in range(1, epochs + 1))


class TeacherCache:
    """One cache folder; build missing epochs with :meth:`ensure`, read with :meth:`lookup`."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = path
        self.meta = meta
        self.layout = Layout(tuple(meta["sizes"]), meta["num_processes"])
        self.torch_dtype, self.np_dtype = STORAGE[meta["dtype"]]
        #: ``teacher.cache_topk`` (a key part only when set: full-logit caches keep their keys).
        self.topk: int | None = meta["parts"].get("output_topk")
        self._open: dict[int, dict[str, np.ndarray]] = {}

    # -- opening

    @classmethod
    def open(cls, root: Path, key: CacheKey, layout: Layout, dtype: str) -> "TeacherCache":
        """The cache for ``key`` (what fixes the outputs) under ``root``, created empty if new.
        An existing folder is compared with the key in every part, its layout and dtype
        included, and refused when any differs."""
        if dtype not in STORAGE:
            raise KDEngineError(f"teacher.cache_dtype: '{dtype}' is not one of {', '.join(STORAGE)}")
        full = stored_key(key, layout, dtype)
        path = Path(root) / full.digest()
        meta = {"format": FORMAT, "key": full.digest(), "dtype": dtype, "parts": full.recorded(),
                "sizes": list(layout.sizes), "num_processes": layout.num_processes, "shapes": None}
        meta_file = path / "meta.json"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KDEngineError(f"teacher.cache_dir: cannot create '{path}': {exc.strerror or exc}") from None
        if meta_file.is_file():
            try:
                recorded = json.loads(meta_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise KDEngineError(f"{meta_file}: unreadable teacher cache ({exc}); delete the folder to rebuild it") from None
            differs = full.difference(recorded.get("parts", {}))
            differs += [f for f in ("format", "key", "dtype", "sizes", "num_processes") if recorded.get(f) != meta[f]]
            if differs:
                raise KDEngineError(
                    f"{meta_file}: this teacher cache was made for other settings (differs in "
                    f"{', '.join(dict.fromkeys(differs))}); delete the folder to rebuild it"
                )
            meta = recorded
        else:
            atomic_write_text(meta_file, json.dumps(meta, indent=2))
        return cls(path, meta)

    @property
    def key(self) -> str:
        return self.meta["key"]

    def epoch_dir(self, epoch: int) -> Path:
        return self.path / f"epoch-{epoch:04d}"

    def has_epoch(self, epoch: int) -> bool:
        return (self.epoch_dir(epoch) / "done").is_file()  # as epochs_present counts them

    def missing(self, epochs: int) -> list[int]:
        return [e for e in range(1, epochs + 1) if not self.has_epoch(e)]

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*.npy"))

    # -- building

    def ensure(self, epochs: int, batches: Callable[[int], Any], teacher: Callable[[], Callable],
               feature_paths: list[str], group_rows: int = 0,
               log: Callable[[str], None] = lambda _: None) -> dict[str, float]:
        """Build every missing epoch up to ``epochs``, running the teacher on ``group_rows`` rows
        at a time (consecutive steps joined; 0: one step at a time).

        ``batches(epoch)`` yields, for each step, the augmented input rows of that step (already
        concatenated over processes); ``teacher()`` returns a function mapping an input batch to
        ``(output, {path: feature})``; it is only called when something is missing, so a complete
        cache never loads the teacher.
        """
        todo = self.missing(epochs)
        stats = {"built_epochs": len(todo), "seconds": 0.0}
        if not todo:
            return stats
        started = time.perf_counter()
        forward = teacher()
        for epoch in todo:
            self._build_epoch(epoch, grouped(batches(epoch), group_rows), forward, feature_paths)
            log(f"teacher cache {self.key}: epoch {epoch} written")
        stats["seconds"] = time.perf_counter() - started
        return stats

    def _build_epoch(self, epoch: int, batches, forward, feature_paths: list[str]) -> None:
        final = self.epoch_dir(epoch)
        tmp = self.path / f".tmp-epoch-{epoch:04d}-{time.time_ns()}"
        tmp.mkdir()
        try:
            arrays: dict[str, np.ndarray] = {}
            row = 0
            for inputs in batches:
                output, features = forward(inputs)
                if not isinstance(output, torch.Tensor):
                    raise KDEngineError(
                        f"teacher.cache: the teacher returns {type(output).__name__}, not a tensor; "
                        "the cache stores tensor outputs only (set teacher.cache = false)"
                    )
                values = {"output": output, **{f"feat-{i}": features[p] for i, p in enumerate(feature_paths)}}
                if not arrays:
                    self._record_shapes(values)
                values = stored_arrays(values, self.topk)
                if not arrays:
                    arrays = {
                        name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=self._np_dtype(value),
                                                        shape=(self.layout.rows, *value.shape[1:]))
                        for name, value in values.items()
                    }
                stop = row + output.shape[0]
                if stop > self.layout.rows:
                    raise KDEngineError(f"teacher cache: epoch {epoch} yields more rows than its {self.layout.rows}")
                for name, value in values.items():
                    arrays[name][row:stop] = self._to_numpy(value, name, epoch)
                row = stop
            if row != self.layout.rows:
                raise KDEngineError(f"teacher cache: epoch {epoch} produced {row} rows, expected {self.layout.rows}")
            for array in arrays.values():
                array.flush()
            del arrays
            (tmp / "done").write_text("ok\n")
            try:
                tmp.rename(final)
            except OSError:
                if not self.has_epoch(epoch):  # not another process finishing the same epoch first
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _record_shapes(self, values: dict[str, torch.Tensor]) -> None:
        shapes = {name: list(value.shape[1:]) for name, value in values.items()}
        if self.meta.get("shapes") is None:
            self.meta["shapes"] = shapes
            atomic_write_text(self.path / "meta.json", json.dumps(self.meta, indent=2))
        elif self.meta["shapes"] != shapes:
            raise KDEngineError(
                f"{self.path / 'meta.json'}: the teacher now gives shapes {shapes}, the cache holds "
                f"{self.meta['shapes']}; delete the folder to rebuild it"
            )

    def _np_dtype(self, value: torch.Tensor) -> np.dtype:
        return self.np_dtype if value.is_floating_point() else value.cpu()[:0].numpy().dtype

    def _to_numpy(self, value: torch.Tensor, name: str = "output", epoch: int = 0) -> np.ndarray:
        if not value.is_floating_point():  # classes of top-k logits: stored as they are
            return value.detach().cpu().numpy()
        value = value.detach().cpu()
        stored = value.to(self.torch_dtype)
        if not bool(torch.isfinite(stored).all()):
            raise KDEngineError(non_finite_problem(value, name, epoch, self.meta["dtype"]))
        value = stored
        if self.torch_dtype is torch.bfloat16:
            value = value.view(torch.int16)
        return value.numpy()

    # -- reading

    def _arrays(self, epoch: int) -> dict[str, np.ndarray]:
        if epoch not in self._open:
            folder = self.epoch_dir(epoch)
            if not self.has_epoch(epoch):
                raise KDEngineError(f"teacher cache {self.path}: epoch {epoch} is missing")
            self._open = {epoch: {f.stem: np.load(f, mmap_mode="r") for f in sorted(folder.glob("*.npy"))}}
        return self._open[epoch]

    def lookup(self, epoch: int, step: int, process: int | None, feature_paths: list[str],
               device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher's output and features for one process's share of one step (the whole step
        when ``process`` is None), as float32."""
        if process is None:
            start = self.layout.offset(step)
            stop = start + self.layout.sizes[step]
        else:
            start, stop = self.layout.share(step, process)
        arrays = self._arrays(epoch)

        def read(name: str) -> torch.Tensor:
            value = torch.from_numpy(np.array(arrays[name][start:stop]))  # a copy: the map is read-only
            if name == topk.CLASSES:  # integers (an int16 array is otherwise a bfloat16 one)
                return value.to(device=device, non_blocking=True)
            if self.torch_dtype is torch.bfloat16:
                value = value.view(torch.bfloat16)
            return value.to(device=device, dtype=torch.float32, non_blocking=True)

        if self.topk is None:
            output = read("output")
        else:
            classes = self.meta["shapes"]["output"][0]
            output = topk.decode(read(topk.VALUES), read(topk.CLASSES), read(topk.LSE), classes)
        return output, {p: read(f"feat-{i}") for i, p in enumerate(feature_paths)}


def grouped(batches, group: int):
    """Consecutive steps' inputs concatenated up to ``group`` rows: the teacher runs at the batch
    size that suits inference, whatever the student's (the outputs are the same: the teacher is
    in eval mode)."""
    pending: list[torch.Tensor] = []
    rows = 0
    for inputs in batches:
        pending.append(inputs)
        rows += inputs.shape[0]
        if rows >= group:
            yield pending[0] if len(pending) == 1 else torch.cat(pending)
            pending, rows = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else torch.cat(pending)


def non_finite_problem(value: torch.Tensor, name: str, epoch: int, dtype: str) -> str:
    """Why a teacher value cannot be cached: the teacher itself gives NaN or inf, or its values
    are finite but beyond what ``teacher.cache_dtype`` can hold (float16 stops at 65504)."""
    what = "output" if name == "output" else f"tapped feature {name}"
    if not bool(torch.isfinite(value).all()):
        return (f"teacher.cache: the teacher's {what} holds NaN or inf (cache epoch {epoch}); the teacher "
                "itself is broken (diverged training or a wrong checkpoint): score it with kdengine evaluate")
    largest = float(value.abs().max())
    return (f"teacher.cache_dtype = \"{dtype}\": the teacher's {what} reaches {largest:.4g} (cache epoch "
            f"{epoch}), beyond {dtype}'s range ({float(torch.finfo(STORAGE[dtype][0]).max):.4g}); set "
            "teacher.cache_dtype = \"bfloat16\" or \"float32\"")


def stored_arrays(values: dict[str, torch.Tensor], k: int | None) -> dict[str, torch.Tensor]:
    """What an epoch's folder stores for a batch of teacher outputs and features: them as they are,
    or with top-k storage, the output's top-k arrays in its place."""
    if k is None:
        return values
    problem = topk.topk_problem(tuple(values["output"].shape), [n for n in values if n != "output"])
    if problem is not None:
        raise KDEngineError(problem)
    return {**topk.encode(values["output"], k), **{n: v for n, v in values.items() if n != "output"}}


def npy_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The size of an .npy file holding an array of ``shape`` and ``dtype`` (header included)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return len(header.getvalue()) + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def predicted_bytes(values: dict[str, torch.Tensor], rows: int, epochs: int, dtype: str, k: int | None) -> int:
    """The size on disk of a cache of ``epochs`` epochs of ``rows`` rows, from one batch of the
    teacher's outputs and features (``values``, named as in an epoch's folder: ``output``,
    ``feat-0``, ...) stored in ``dtype`` (``teacher.cache_dtype``), with top-k storage when ``k``."""
    storage = STORAGE[dtype][1]
    per_epoch = 0
    for value in stored_arrays(values, k).values():
        kind = storage if value.is_floating_point() else value.cpu()[:0].numpy().dtype
        per_epoch += npy_bytes((rows, *value.shape[1:]), kind)
    return epochs * per_epoch


def warn_not_replayable(problem: str, dataset: str) -> None:
    warnings.warn(f"teacher.cache: dataset '{dataset}': {problem}")
