"""Shared fixtures: offline mode, tiny recipes, third-party plugin packages installed for real."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def shared_data_root() -> Path | None:
    """The real datasets beside the project (KDENGINE_DATA_ROOT or ../shared/data), if present."""
    env = os.environ.get("KDENGINE_DATA_ROOT")
    candidate = Path(env) if env else ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


TINY_RECIPE = {
    "run": {"name": "tiny", "seed": 0},
    "data": {"name": "digits", "params": {"image_size": 8, "train_size": 200, "val_size": 200, "test_size": 200}},
    "teacher": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True}},
    "student": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True}},
    "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 256, "max_steps_per_epoch": 2,
              "optimizer": {"name": "sgd", "lr": 0.05}},
    "loss": [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
             {"name": "cross_entropy", "weight": 0.1}],
    "metric": [{"name": "top1"}, {"name": "top5"}],
}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU they lose a lot."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_recipe() -> dict:
    return copy.deepcopy(TINY_RECIPE)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The fixture plugin packages, installed with pip into a folder of their own."""
    target = tmp_path_factory.mktemp("site")
    for name in ("kdengine-toy", "kdengine-broken", "kdengine-badhook"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-index", "--target", str(target), str(FIXTURES / name)],
            check=True, capture_output=True,
        )
    return target


@pytest.fixture
def third_party(plugin_site, monkeypatch):
    """Make the installed fixture plugins visible (sys.path) and rebuild the catalog; by default
    the broken ones are disabled so tests see only the toy plugin unless they enable them."""
    from kdengine.plugins.catalog import get_catalog

    monkeypatch.syspath_prepend(str(plugin_site))
    monkeypatch.setenv("KDENGINE_DISABLE_PLUGINS", "broken,badhook")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")]))
    get_catalog(refresh=True)
    yield plugin_site
    monkeypatch.undo()
    for name in [m for m in sys.modules if m.startswith(("kdengine_toy", "kdengine_broken", "kdengine_badhook"))]:
        del sys.modules[name]
    get_catalog(refresh=True)


def interrupt_after_epoch(monkeypatch, stage: str, epoch: int) -> None:
    """Make a run stop (RuntimeError "interrupted") right after ``stage`` has kept ``epoch``: its
    checkpoint and training state are written, as when a run is killed there."""
    from kdengine.train.stage import EpochKeeper

    original = EpochKeeper.keep

    def keep(self, record, *args):
        original(self, record, *args)
        if self.plan.name == stage and record.epoch == epoch:
            raise RuntimeError("interrupted")

    monkeypatch.setattr(EpochKeeper, "keep", keep)


@pytest.fixture
def extra_plugin(monkeypatch):
    """Register an extra built-in-like plugin for one test: ``extra_plugin(register_loss_terms=fn)``."""
    import types

    from kdengine import hookimpl
    from kdengine.plugins import manager as plugins
    from kdengine.plugins.catalog import get_catalog

    def install(**hooks):
        module = types.ModuleType("kdengine_extra")
        for name, fn in hooks.items():
            setattr(module, name, hookimpl(fn))
        monkeypatch.setitem(sys.modules, "kdengine_extra", module)
        monkeypatch.setitem(plugins.BUILTIN_PLUGINS, "extra", "kdengine_extra")
        get_catalog(refresh=True)

    yield install
    monkeypatch.undo()
    get_catalog(refresh=True)
