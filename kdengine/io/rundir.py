"""The run folder: ``<output_dir>/<name>-<timestamp>/``, never reused, written by the main process."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn

from kdengine.io.atomic import atomic_write, atomic_write_text
from kdengine.io.fingerprint import data_fingerprint, file_sha256
from kdengine.io.weights import save_weights
from kdengine.errors import DataWarning, KDEngineError
from kdengine.io.results import EpochRecord

if TYPE_CHECKING:
    from kdengine.recipe import Recipe

#: Refuse to start a run with less free space than this in the output folder.
MIN_FREE_BYTES = 200 * 2**20
PACKAGES = ("kdengine", "torch", "torchvision", "accelerate", "timm", "torchmetrics",
            "segmentation-models-pytorch", "spandrel", "pydantic", "pluggy")


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


class RunFolder:
    def __init__(self, path: Path, main: bool):
        self.path = path
        self.main = main

    @classmethod
    def create(cls, recipe: Recipe, accelerator: Accelerator, output_dir: str | Path | None = None,
               folder_name: str | None = None, provider=None) -> "RunFolder":
        """A new run folder; ``folder_name`` fixes its name (it must not exist yet). ``provider``
        (the run's dataset) gives the data fingerprint recorded in ``environment.json``."""
        parent = Path(output_dir) if output_dir is not None else recipe.run.output_dir
        holder: list[str | None] = [None]
        if accelerator.is_main_process:
            holder[0] = str(cls._make_unique(recipe, parent, folder_name))
        if accelerator.num_processes > 1:
            broadcast_object_list(holder)
        folder = cls(Path(holder[0]), accelerator.is_main_process)
        if folder.main:
            folder._write_provenance(recipe, accelerator, provider)
        return folder

    @staticmethod
    def _make_unique(recipe: Recipe, parent: Path, folder_name: str | None = None) -> Path:
        where = f"{recipe.source}: run.output_dir"
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KDEngineError(f"{where}: cannot create '{parent}': {exc.strerror or exc}") from None
        free = shutil.disk_usage(parent).free
        if free < MIN_FREE_BYTES:
            raise KDEngineError(f"{where}: only {free / 2**20:.0f} MiB free in '{parent}'; need at least "
                                f"{MIN_FREE_BYTES / 2**20:.0f} MiB for checkpoints and results")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = folder_name or f"{recipe.run.name}-{stamp}"
        for attempt in range(1 if folder_name else 1000):
            suffix = "" if attempt == 0 else f"-{attempt}"
            path = parent / f"{base}{suffix}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                raise KDEngineError(f"{where}: cannot write in '{parent}': {exc.strerror or exc}") from None
        raise KDEngineError(f"{where}: could not find a free run folder name in '{parent}'")

    def _write_provenance(self, recipe: Recipe, accelerator: Accelerator, provider=None) -> None:
        atomic_write_text(self.path / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
        env = {
            "versions": _versions(),
            "platform": platform.platform(),
            "device": str(accelerator.device),
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "recipe_source": recipe.source,
        }
        if recipe.teacher.checkpoint is not None:
            env["teacher_checkpoint_sha256"] = file_sha256(Path(recipe.teacher.checkpoint))
        if provider is not None:
            env["data_fingerprint"] = data_fingerprint(provider)
        atomic_write_text(self.path / "environment.json", json.dumps(env, indent=2))

    # -- during training

    def log_epoch(self, stage: str, record: EpochRecord) -> None:
        if not self.main:
            return
        line = json.dumps({"stage": stage, **record.model_dump()})
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()

    def state_path(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage / "state.pt"

    @classmethod
    def reopen(cls, path: Path, accelerator: Accelerator, provider=None) -> "RunFolder":
        """An existing run folder, to resume in. With ``provider``, a warning tells when the data
        no longer matches the fingerprint recorded when the run started."""
        if not (path / "recipe.json").is_file():
            raise KDEngineError(f"{path}: not a run folder (no recipe.json)")
        folder = cls(path, accelerator.is_main_process)
        if folder.main and provider is not None:
            folder._compare_data(provider)
        return folder

    def _compare_data(self, provider) -> None:
        try:
            recorded = json.loads((self.path / "environment.json").read_text(encoding="utf-8"))["data_fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # nothing recorded to compare with
        if recorded is None or (isinstance(recorded, dict) and "error" in recorded):
            return
        current = data_fingerprint(provider)

        def key(value):
            return value.get("sha256") if isinstance(value, dict) else value

        if key(current) != key(recorded):
            warnings.warn(f"{self.path}: the data differs from the data this run started with "
                          "(environment.json data_fingerprint); the resumed stages train on the new data",
                          DataWarning)

    def forget_epochs_after(self, stage: str, epoch: int) -> None:
        """Drop log lines of a stage's epochs after ``epoch`` (written before an interruption)."""
        log = self.path / "metrics.jsonl"
        if not self.main or not log.is_file():
            return
        kept = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
            if row.get("stage") == stage and row.get("epoch", 0) > epoch:
                continue
            kept.append(line)
        atomic_write_text(log, "".join(l + "\n" for l in kept))

    @staticmethod
    def checkpoint_path(stage: str, which: str) -> str:
        return f"checkpoints/{stage}/{which}.safetensors"

    def save_checkpoint(self, stage: str, model: nn.Module, best: bool) -> None:
        meta = {"stage": stage}
        save_weights(model, self.path / self.checkpoint_path(stage, "last"), metadata=meta)
        if best:
            last = self.path / self.checkpoint_path(stage, "last")
            atomic_write(self.path / self.checkpoint_path(stage, "best"), lambda tmp: shutil.copyfile(last, tmp))
