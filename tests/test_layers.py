"""kdengine.tools.layers and ``kdengine layers``: a recipe model's tappable layers with their shapes."""

from __future__ import annotations

import copy

import pytest

from conftest import ROOT, TINY_RECIPE
from kdengine import KDEngineError
from kdengine.tools.layers import recipe_layers


pytestmark = pytest.mark.usefixtures("one_thread")


def test_student_layers_have_paths_types_and_shapes():
    layers = {layer.path: layer for layer in recipe_layers(copy.deepcopy(TINY_RECIPE), "student")}
    assert layers["features.4"].shape == (1, 8, 2, 2)  # digits 8x8, CIFAR stem, x0.25 widths
    assert layers["features.4"].module == "InvertedResidual"
    assert layers["classifier.1"].shape == (1, 10)


def test_teacher_role_builds_the_teacher():
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["teacher"] = {"name": "timm", "params": {"model": "test_resnet"}}
    layers = {layer.path: layer.shape for layer in recipe_layers(recipe, "teacher", input_shape=(1, 8, 8))}
    assert layers["layer1"] == (1, 32, 2, 2) and layers["fc"] == (1, 10)
    assert "features.4" not in layers


def test_listed_layers_can_be_tapped_by_a_feature_loss(tmp_path):
    from kdengine.tools.validate import dry_run

    recipe = copy.deepcopy(TINY_RECIPE)
    paths = [layer.path for layer in recipe_layers(recipe, "student") if len(layer.shape) == 4]
    recipe["loss"].append({"name": "attention_transfer", "params": {"pairs": [[paths[-1], paths[-1]]]}})
    report = dry_run(recipe)
    assert "attention_transfer" in report.loss_values
    assert report.layers == {} and not any("tappable" in line for line in report.lines())  # short by default


def test_cli_lists_layers(tmp_path, capsys):
    import json

    from kdengine.cli import main

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_RECIPE))
    assert main(["layers", str(path), "--role", "teacher", "--set", "teacher.params.width_mult=0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["path", "module", "output", "shape"]
    assert any(line.split()[0] == "features.4" and line.endswith("(1, 16, 2, 2)") for line in lines)


def test_validate_lists_teacher_and_student_layers_on_the_batch(tmp_path, capsys):
    import json

    from kdengine.cli import main

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_RECIPE))
    assert main(["validate", str(path), "--layers", "--set", "teacher.params.width_mult=0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: OK")
    teacher, student = out.split("tappable layers")[1:3]  # each section follows its heading
    assert "teacher torchvision(model=mobilenet_v2, width_mult=0.5, cifar_stem=True): " in out
    assert "student torchvision(model=mobilenet_v2, width_mult=0.25, cifar_stem=True): " in out
    rows = {name: {line.split()[0]: line for line in section.splitlines()[2:]} for name, section in
            (("teacher", teacher), ("student", student))}
    # The dry run's batch of 32 digits (8x8): the shapes feature losses would see.
    assert rows["teacher"]["features.4"].split(None, 2)[1:] == ["InvertedResidual", "(32, 16, 2, 2)"]
    assert rows["student"]["features.4"].endswith("(32, 8, 2, 2)")
    assert rows["student"]["classifier.1"].endswith("(32, 10)")


def test_validate_layers_of_one_architecture_are_listed_once():
    from kdengine.tools.validate import dry_run

    report = dry_run(copy.deepcopy(TINY_RECIPE), layers=True)  # teacher and student are the same model
    (label,) = report.layers
    assert label.startswith("teacher and student torchvision(")
    assert {layer.path for layer in report.layers[label]} >= {"features.4", "classifier.1"}


def test_layers_of_a_progressive_chain(capsys):
    """A chain has no [student]: the first generation's student is listed, or the stage named."""
    from kdengine.cli import main

    recipe = str(ROOT / "recipes" / "progressive.toml")
    first = recipe_layers(recipe, "student")
    last = recipe_layers(recipe, "student", stage="mobilenet_v2-0.5x")
    assert first and last and len(last) == len(first)  # same architecture, narrower
    assert first[-1].shape == last[-1].shape == (1, 10)
    assert first[2].shape[1] > last[2].shape[1]
    with pytest.raises(KDEngineError, match=r"--stage: no stage 'gen9'; this recipe has: teacher, "):
        recipe_layers(recipe, "student", stage="gen9")
    assert main(["layers", recipe, "--stage", "mobilenet_v2"]) == 0
    assert "features" in capsys.readouterr().out


def test_bad_role_and_cli(capsys):
    from kdengine.cli import main

    with pytest.raises(KDEngineError, match="--role"):
        recipe_layers(copy.deepcopy(TINY_RECIPE), "critic")
    assert main(["layers", "no/such/recipe.toml"]) == 2
    assert "recipe file not found" in capsys.readouterr().err
