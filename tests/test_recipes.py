"""Every recipe in recipes/ passes `kdengine validate`, or stops only because its external data or
weights are absent (and says so, naming the file and field). Past their data, the recipes that
start from pretrained weights stop on those, offline, and say where they looked."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import shared_data_root
from kdengine import DataInfo, KDEngineError, WeightsUnavailableError, load_recipe
from kdengine.plugins.catalog import get_catalog
from kdengine.tools.validate import dry_run

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))

#: Recipes that need data or weights that cannot ship with the project, and the message they give.
NEEDS_EXTERNAL = {
    "cifar100.toml": "data.params.root: CIFAR-100 not found",
    "cifar100-progressive.toml": "data.params.root: CIFAR-100 not found",
    "cifar100-resnet32x4-resnet8x4.toml": "data.params.root: CIFAR-100 not found",
    "cifar100-resnet50-mobilenetv2.toml": "data.params.root: CIFAR-100 not found",
    "edge-bsds500.toml": "data",
    "sr-paper.toml": "VGG",
}

#: Recipes whose models start from pretrained weights: the role, the dataset it is built for, and
#: what the offline message names.
NEEDS_WEIGHTS = {
    ("cifar100.toml", "teacher"): (DataInfo("classification", 3, 100), "timm 'resnet101'"),
    ("cifar100-progressive.toml", "teacher"): (DataInfo("classification", 3, 100), "timm 'resnet101'"),
    ("edge-bsds500.toml", "teacher"): (DataInfo("edges", 3, 1), "encoder 'resnet34'"),
    ("edge-bsds500.toml", "student"): (DataInfo("edges", 3, 1), "encoder 'mobilenet_v2'"),
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


@pytest.fixture
def no_cached_weights(monkeypatch, tmp_path):
    """Offline, with an empty Hugging Face cache and an empty TORCH_HOME."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))  # read at import


@pytest.mark.parametrize("recipe,role", sorted(NEEDS_WEIGHTS), ids=lambda v: str(v))
def test_pretrained_recipes_say_which_weights_are_missing(recipe, role, no_cached_weights):
    info, names = NEEDS_WEIGHTS[(recipe, role)]
    spec = getattr(load_recipe(ROOT / "recipes" / recipe), role)
    factory = get_catalog().get(role, spec.name)(spec.params)
    with pytest.raises(WeightsUnavailableError) as error:
        factory.build(info)
    message = str(error.value)
    assert names in message and "HF_HOME" in message and "teacher.checkpoint" in message


def test_edge_recipe_with_its_data_stops_on_the_missing_encoder_weights(no_cached_weights):
    data = shared_data_root()
    if data is None or not (data / "BSDS500").is_dir():
        pytest.skip("BSDS500 is not beside the project")
    path = ROOT / "recipes" / "edge-bsds500.toml"
    with pytest.raises(WeightsUnavailableError) as error:
        dry_run(path, QUICK + [f"data.params.root={data / 'BSDS500'}"])
    message = str(error.value)
    assert message.startswith(f"{path}: teacher: unet: could not fetch the 'imagenet' weights")
    assert "HF_HOME" in message
