"""benchmarks/methods.py sets every method up on each benchmarked pair: the digits recipe and the
published CIFAR-100 pairs, whose recipes a user with the data runs in one command."""

from __future__ import annotations

import sys
import tomllib

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from methods import PAIRS, PAPERS, method_losses  # noqa: E402

FEATURE_AND_RELATION = ["fitnets", "attention_transfer", "crd", "rkd", "pkt", "sp", "nst", "vid", "ofd", "ft",
                        "reviewkd"]


def recipe_of(name: str) -> dict:
    return tomllib.loads((ROOT / "recipes" / name).read_text(encoding="utf-8"))


def on_small_digits(recipe: dict) -> dict:
    """The pair on a few 32 px digits: the CIFAR models' shapes, without the CIFAR data."""
    recipe["data"] = {"name": "digits", "params": {"image_size": 32, "train_size": 64, "val_size": 32, "test_size": 32}}
    recipe["train"].update(batch_size=8, eval_batch_size=32, num_workers=0, mixed_precision="no")
    recipe["teacher"].pop("train", None)
    return recipe


@pytest.mark.parametrize("name", list(PAIRS))
def test_every_method_is_a_valid_loss_list_on_each_pair(name):
    from kdengine.recipe import load_recipe

    recipe = recipe_of(name)
    table = method_losses(PAIRS[name], recipe["train"]["batch_size"], recipe["train"]["epochs"])
    assert list(table) == list(PAPERS)
    for method, losses in table.items():
        recipe["loss"] = losses
        load_recipe(recipe)  # the params of every term validate


def test_dkd_warms_up_over_a_twelfth_of_the_run_as_in_its_reference_code():
    pair = PAIRS["cifar100-resnet32x4-resnet8x4.toml"]
    assert method_losses(pair, 64, 240)["dkd"][1]["warmup_epochs"] == 20
    assert method_losses(pair, 32, 15)["dkd"][1]["warmup_epochs"] == 1
    assert method_losses(pair, 64, 240)["pkt"][1]["weight"] == pytest.approx(30000 / 64)


@pytest.mark.parametrize("name", ["cifar100-resnet32x4-resnet8x4.toml", "cifar100-resnet50-mobilenetv2.toml"])
def test_the_cifar_pairs_taps_exist_and_every_feature_method_runs_on_their_shapes(name, one_thread):
    from kdengine.tools.validate import dry_run

    recipe = on_small_digits(recipe_of(name))
    table = method_losses(PAIRS[name], 64, 240)
    for method in FEATURE_AND_RELATION:
        recipe["loss"] = table[method]
        report = dry_run(recipe)
        assert method in report.loss_values, method


def test_a_recipe_without_a_tap_layout_is_named():
    from methods import pair_of

    with pytest.raises(SystemExit, match="edge.toml: no tap layout"):
        pair_of(ROOT / "recipes" / "edge.toml")
