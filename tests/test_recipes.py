"""Every recipe in recipes/ passes `kdengine validate`, or stops only because its external data or
weights are absent (and says so, naming the file and field)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdengine import KDEngineError, load_recipe
from kdengine.tools.validate import dry_run

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))

#: Recipes that need data or weights that cannot ship with the project, and the message they give.
NEEDS_EXTERNAL = {
    "cifar100.toml": "data.params.root: CIFAR-100 not found",
    "cifar100-progressive.toml": "data.params.root: CIFAR-100 not found",
    "edge-bsds500.toml": "data",
    "sr-paper.toml": "VGG",
}

#: Cheap overrides so a dry run of the offline recipes stays quick.
QUICK = ["train.batch_size=2"]


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"classification.toml", "cifar100.toml", "progressive.toml", "cifar100-progressive.toml",
            "edge.toml", "edge-bsds500.toml", "sr.toml", "sr-paper.toml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative data roots resolve to nothing here, as on a fresh clone
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached VGG weights
    if path.name in NEEDS_EXTERNAL:
        with pytest.raises(KDEngineError) as info:
            load_recipe(path)  # both validation phases
            dry_run(path, QUICK)
        message = str(info.value)
        assert message.startswith(f"{path}:") and NEEDS_EXTERNAL[path.name] in message
    else:
        load_recipe(path)
        report = dry_run(path, QUICK)
        assert report.models and report.loss_values and all(v == v for v in report.loss_values.values())
