"""Recipe loading: two-phase validation, every problem reported with file and path, overrides."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from kdengine import RecipeError, load_recipe
from kdengine.errors import KDEngineError
from kdengine.recipe import apply_overrides, monitored_metric


def write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(exc_info) -> list[str]:
    return exc_info.value.problems


def test_loads_dict_and_defaults(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    assert recipe.source == "<dict>"
    assert recipe.train.optimizer.name == "sgd"
    assert recipe.train.scheduler.name == "none"
    assert recipe.loss[0].weight == 0.9
    assert monitored_metric(recipe) == ("top1", True)


def test_malformed_toml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "[run\nname = 'x'\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert "invalid TOML" in str(info.value) and "line 1" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")


def test_all_shape_problems_reported_together(tiny_recipe):
    tiny_recipe["train"]["epochs"] = "three"
    tiny_recipe["train"]["batchsize"] = 4
    tiny_recipe["loss"][0]["weight"] = -1
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe)
    lines = problems(info)
    assert any(l.startswith("train.epochs:") for l in lines)
    assert "train.batchsize: extra inputs are not permitted" in lines
    assert any(l.startswith("loss[0].weight:") and "greater than or equal to 0" in l for l in lines)
    assert all(str(info.value).splitlines()[i].startswith("<dict>: ") for i in range(len(lines)))


def test_component_params_validated_with_path(tiny_recipe):
    tiny_recipe["loss"][0]["params"] = {"temprature": 4.0}
    tiny_recipe["loss"][1]["params"] = {"label_smoothing": 2.0}
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe)
    lines = problems(info)
    assert "loss[0].params.temprature: extra inputs are not permitted" in lines
    assert any(l.startswith("loss[1].params.label_smoothing:") for l in lines)


def test_negative_temperature_rejected(tiny_recipe):
    tiny_recipe["loss"][0]["params"] = {"temperature": -1}
    with pytest.raises(RecipeError, match=r"loss\[0\]\.params\.temperature: input should be greater than 0"):
        load_recipe(tiny_recipe)


def test_unknown_name_suggests_closest_and_lists_known(tiny_recipe):
    tiny_recipe["loss"][0]["name"] = "kl_dvi"
    tiny_recipe["metric"][0]["name"] = "top_1"
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe)
    text = str(info.value)
    assert "loss[0].name: unknown loss term 'kl_dvi'. Did you mean 'kl_div'?" in text
    assert "cross_entropy" in text  # the list of what exists
    assert "metric[0].name: unknown metric 'top_1'. Did you mean 'top1'?" in text


def test_monitor_must_be_a_metric(tiny_recipe):
    tiny_recipe["train"]["monitor"] = "accuracy"
    with pytest.raises(RecipeError, match="train.monitor: 'accuracy' is not a metric of this recipe; known: top1, top5"):
        load_recipe(tiny_recipe)


def test_report_epochs_in_range(tiny_recipe):
    tiny_recipe["train"]["report_epochs"] = [0, 5]
    with pytest.raises(RecipeError, match="report_epochs"):
        load_recipe(tiny_recipe)


def test_teacher_only_losses_rejected_when_something_trains_without_teacher(tiny_recipe):
    tiny_recipe["loss"] = [{"name": "kl_div"}]
    with pytest.raises(RecipeError, match="every loss term needs the teacher"):
        load_recipe(tiny_recipe)


def test_overrides_parse_toml_values_and_indices(tiny_recipe):
    recipe = load_recipe(tiny_recipe, overrides=[
        "train.epochs=3", "loss[0].params.temperature=2.5", "loss.1.weight=0.5",
        "run.name=other", "train.optimizer={ name = 'adam', lr = 1e-3 }", "train.baseline=false",
    ])
    assert recipe.train.epochs == 3
    assert recipe.loss[0].params["temperature"] == 2.5
    assert recipe.loss[1].weight == 0.5
    assert recipe.run.name == "other"
    assert recipe.train.optimizer.name == "adam" and recipe.train.optimizer.lr == 1e-3
    assert recipe.train.baseline is False


def test_override_errors_are_clear(tiny_recipe):
    with pytest.raises(KDEngineError, match="expected KEY=VALUE"):
        apply_overrides(tiny_recipe, ["train.epochs"])
    with pytest.raises(KDEngineError, match=r"no list item \[5\]"):
        apply_overrides(tiny_recipe, ["loss[5].weight=1"])
    with pytest.raises(RecipeError, match="train.epochs"):
        load_recipe(tiny_recipe, overrides=["train.epochs=0"])


def test_teacher_train_overrides_merge(tiny_recipe):
    tiny_recipe["teacher"]["train"] = {"epochs": 7, "optimizer": {"name": "adam", "lr": 0.001}}
    recipe = load_recipe(tiny_recipe)
    teacher_train = recipe.teacher_train()
    assert teacher_train.epochs == 7 and teacher_train.optimizer.name == "adam"
    assert teacher_train.batch_size == recipe.train.batch_size
    assert recipe.train.epochs == 1


def test_json_round_trip(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe.to_dict()))
    again = load_recipe(path)
    assert again.to_dict() == recipe.to_dict()


def test_stage_overrides_are_validated_after_merging(tiny_recipe):
    tiny_recipe["train"].update(epochs=15, report_epochs=[5, 10, 15])
    tiny_recipe["teacher"]["train"] = {"epochs": 12}
    recipe = load_recipe(tiny_recipe)
    assert recipe.teacher_train().report_epochs == [5, 10]  # inherited epochs past the end are dropped
    tiny_recipe["teacher"]["train"] = {"epochs": 12, "report_epochs": [14]}
    with pytest.raises(RecipeError) as caught:
        load_recipe(tiny_recipe)
    # The file and the full path of the field, as for every other recipe error.
    assert str(caught.value) == "<dict>: teacher.train.report_epochs: [14] outside 1..epochs (12)"


def test_stage_override_errors_name_the_file_and_the_field(tmp_path):
    recipe = tmp_path / "chain.toml"
    text = (ROOT / "recipes" / "progressive.toml").read_text()
    recipe.write_text(text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, overrides=["generation[0].train.optimizer.momentum=0.5",
                                       "generation[0].train.optimizer.name='adam'"])
    assert str(caught.value) == f"{recipe}: generation[0].train.optimizer.momentum: extra inputs are not permitted"
