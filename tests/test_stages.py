"""Progressive chains: stage planning, and each generation taught by exactly the weights the recipe names."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

import kdengine
from kdengine import RecipeError, load_recipe
from kdengine.teacher.sources import InlineTeacher
from kdengine.train import run as engine
from kdengine.recipe.stages import plan_stages

GEN = {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True}}


def chain_recipe(tiny_recipe, **extra):
    tiny_recipe.pop("student")
    tiny_recipe["generation"] = [
        {"name": "gen2", "student": GEN},
        {"name": "gen3", "student": GEN, "weights": "last",
         "train": {"optimizer": {"name": "sgd", "lr": 0.025}}},
    ]
    tiny_recipe["train"]["baseline"] = False
    tiny_recipe.update(extra)
    return tiny_recipe


def test_plain_recipe_plans_teacher_scratch_distilled(tiny_recipe):
    plans = plan_stages(load_recipe(tiny_recipe))
    assert [(p.name, p.teacher) for p in plans] == [("teacher", None), ("scratch", None), ("distilled", "teacher")]


def test_chain_plan(tiny_recipe):
    recipe = load_recipe(chain_recipe(tiny_recipe, direct=True))
    plans = plan_stages(recipe)
    assert [(p.name, p.teacher, p.generation) for p in plans] == [
        ("teacher", None, 1), ("gen2", "teacher", 2), ("gen3", "gen2", 3), ("direct", "teacher", None)]
    assert plans[2].train.optimizer.lr == 0.025 and plans[1].train.optimizer.lr == 0.05
    assert plans[3].spec == plans[2].spec


def test_chain_with_baselines(tiny_recipe):
    recipe = chain_recipe(tiny_recipe)
    recipe["train"]["baseline"] = True
    names = [p.name for p in plan_stages(load_recipe(recipe))]
    assert names == ["teacher", "gen2-scratch", "gen2", "gen3-scratch", "gen3"]


def test_chain_validation_errors(tiny_recipe):
    pristine = copy.deepcopy(tiny_recipe)
    bad = chain_recipe(tiny_recipe)
    bad["generation"][1]["teacher"] = "gen9"
    with pytest.raises(RecipeError, match="generation\\[1\\].teacher: 'gen9' is not the teacher or an earlier generation"):
        load_recipe(bad)
    both = chain_recipe(pristine)
    both["student"] = GEN
    with pytest.raises(RecipeError, match="either \\[student\\] or \\[\\[generation\\]\\]"):
        load_recipe(both)


def test_each_generation_is_taught_by_the_named_weights(tiny_recipe, tmp_path, monkeypatch):
    recipe = chain_recipe(tiny_recipe)
    recipe["train"]["epochs"] = 2
    recipe["generation"][0]["weights"] = "best"
    taught: dict[str, dict] = {}
    original = engine.train_stage

    def spy(ctx, plan, factory, source, resume=None):
        if isinstance(source, InlineTeacher):
            taught[plan.name] = {k: v.detach().clone() for k, v in source.model.state_dict().items()}
        return original(ctx, plan, factory, source, resume=resume)

    monkeypatch.setattr(engine, "train_stage", spy)
    results = kdengine.run(recipe, output_dir=tmp_path, progress=False)
    run_dir = tmp_path / results.run_dir.split("/")[-1]
    gen2_last = load_file(str(run_dir / "checkpoints" / "gen2" / "last.safetensors"))
    teacher_best = load_file(str(run_dir / "checkpoints" / "teacher" / "best.safetensors"))
    assert all(torch.equal(taught["gen3"][k], gen2_last[k]) for k in gen2_last)
    assert all(torch.equal(taught["gen2"][k], teacher_best[k]) for k in teacher_best)
    table = kdengine.table(results)
    assert "gen2" in table and "gen3" in table
    from kdengine.reporting.tables import generation_table

    gen_table = generation_table(results)
    assert "compression vs gen 1" in gen_table and "drop from previous" in gen_table
    assert (run_dir / "generations.png").is_file()
