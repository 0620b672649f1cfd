"""kdengine.recipe.schema and ``kdengine schema``: the recipe JSON Schema names every installed component
and checks each one's params."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import TINY_RECIPE
from kdengine.plugins.catalog import get_catalog
from kdengine.recipe.schema import recipe_schema


def _mapping(schema, prop):
    node = schema["properties"][prop]
    node = node.get("items", node)
    return node["discriminator"]["mapping"]


def test_every_registered_component_is_a_choice_of_its_table():
    schema = recipe_schema()
    catalog = get_catalog()
    for prop, kind in [("data", "dataset"), ("teacher", "teacher"), ("student", "student"),
                       ("loss", "loss"), ("metric", "metric")]:
        assert sorted(_mapping(schema, prop)) == catalog.names(kind), prop
    loss_items = schema["properties"]["loss"]["items"]
    assert len(loss_items["oneOf"]) == len(catalog.names("loss"))


def test_component_params_carry_their_constraints():
    schema = recipe_schema()
    defs = schema["$defs"]
    fitnets = defs[_mapping(schema, "loss")["fitnets"].split("/")[-1]]
    assert fitnets["properties"]["name"]["const"] == "fitnets"
    assert "weight" in fitnets["properties"]  # loss tables keep their weight
    params = defs[fitnets["properties"]["params"]["$ref"].split("/")[-1]]
    assert set(params["required"]) == {"student_layer", "teacher_layer"}
    assert params["additionalProperties"] is False
    kl = defs[defs[_mapping(schema, "loss")["kl_div"].split("/")[-1]]["properties"]["params"]["$ref"].split("/")[-1]]
    assert kl["properties"]["temperature"]["exclusiveMinimum"] == 0


def test_schema_accepts_a_valid_recipe_and_rejects_typos():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(recipe_schema())
    recipe = copy.deepcopy(TINY_RECIPE)
    assert list(validator.iter_errors(recipe)) == []
    bad = copy.deepcopy(recipe)
    bad["loss"][0]["params"] = {"temprature": 4.0}
    assert list(validator.iter_errors(bad))
    bad = copy.deepcopy(recipe)
    bad["loss"][0]["name"] = "kl_dvi"
    assert list(validator.iter_errors(bad))
    bad = copy.deepcopy(recipe)
    bad["loss"].append({"name": "fitnets", "params": {"student_layer": "features.4"}})  # teacher_layer missing
    assert list(validator.iter_errors(bad))


def test_third_party_components_appear_namespaced(third_party):
    assert "toy.logit_mse" in _mapping(recipe_schema(), "loss")


def test_cli_schema_writes_json(tmp_path, capsys):
    from kdengine.cli import main

    target = tmp_path / "recipe.schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    written = json.loads(target.read_text())
    assert written["$schema"].endswith("2020-12/schema") and "loss" in written["properties"]
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == written
