"""The loop end to end on tiny models, through the Python API."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import kdengine
from kdengine import LossTerm, TrainingError, load_recipe
from kdengine.train.objective import build_loss_terms
from kdengine.io.results import Results


def test_end_to_end_writes_the_run_folder(tiny_recipe, tmp_path):
    tiny_recipe["train"]["epochs"] = 2
    tiny_recipe["train"]["report_epochs"] = [1]
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    assert [s.stage for s in results.stages] == ["teacher", "scratch", "distilled"]
    run_dir = tmp_path / results.run_dir.split("/")[-1]
    for name in ("recipe.json", "environment.json", "metrics.jsonl", "results.json", "results.md",
                 "curves.png", "samples.png"):
        assert (run_dir / name).is_file(), name
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(l["stage"], l["epoch"]) for l in lines] == [
        ("teacher", 1), ("teacher", 2), ("scratch", 1), ("scratch", 2), ("distilled", 1), ("distilled", 2)]
    assert set(lines[-1]["losses"]) == {"total", "kl_div", "cross_entropy"}
    assert set(lines[0]["losses"]) == {"total", "cross_entropy"}  # the teacher trains without KD
    assert set(lines[-1]["metrics"]) == {"top1", "top5"}
    for stage in ("teacher", "scratch", "distilled"):
        for which in ("best", "last"):
            assert (run_dir / "checkpoints" / stage / f"{which}.safetensors").is_file()
    saved = Results.load(run_dir / "results.json")
    assert saved.stage("distilled").at_epochs[1] == saved.stage("distilled").history[0].metrics
    best = saved.stage("distilled")
    assert best.best[saved.monitor] == max(r.metrics["top1"] for r in best.history)
    table = kdengine.table(results)
    assert "student (distilled)" in table and "compression" in table and "top1 val @1" in table
    assert "top1 test (val-best)" in table and "top1 test (last)" in table
    for stage in saved.stages:  # test is scored once per stage, with both weights
        assert set(stage.test_best) == set(stage.test_last) == {"top1", "top5"}
    assert json.loads((run_dir / "recipe.json").read_text())["run"]["name"] == "tiny"


def test_loaded_teacher_is_frozen_and_runs_never_collide(tiny_recipe, tmp_path):
    first = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    teacher_ckpt = tmp_path / first.run_dir.split("/")[-1] / "checkpoints" / "teacher" / "best.safetensors"
    before = load_file(str(teacher_ckpt))
    tiny_recipe["teacher"]["checkpoint"] = str(teacher_ckpt)
    tiny_recipe["train"]["baseline"] = False
    second = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    assert second.run_dir != first.run_dir
    assert [s.stage for s in second.stages] == ["teacher", "distilled"]
    teacher = second.stage("teacher")
    assert teacher.trained is False and teacher.best == first.stage("teacher").best
    after = load_file(str(teacher_ckpt))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_baseline_weights_are_renormalised(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    specs, terms, weights = build_loss_terms(recipe, with_teacher=False)
    assert [s.name for s in specs] == ["cross_entropy"] and weights == [1.0]
    specs, _, weights = build_loss_terms(recipe, with_teacher=True)
    assert weights == [0.9, 0.1]


def test_non_finite_loss_stops_with_the_term_name(tiny_recipe, tmp_path, extra_plugin):
    class Explode(LossTerm):
        needs_teacher = True

        def forward(self, ctx):
            return ctx.student.sum() * float("nan")

    extra_plugin(register_loss_terms=lambda register: register("explode", Explode))
    tiny_recipe["loss"].append({"name": "explode", "weight": 1.0})
    with pytest.raises(TrainingError, match=r"distilled: non-finite loss \(terms: explode\) at epoch 1, step 1"):
        kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)


def test_non_finite_batches_can_be_skipped_and_counted(tiny_recipe, tmp_path, extra_plugin):
    calls = {"n": 0}

    class SometimesInf(LossTerm):
        """Infinite on every other call: half the distillation batches must be skipped."""

        needs_teacher = True

        def forward(self, ctx):
            calls["n"] += 1
            scale = float("inf") if calls["n"] % 2 == 0 else 0.0
            return ctx.student.float().mean() * scale

    extra_plugin(register_loss_terms=lambda register: register("sometimes_inf", SometimesInf))
    tiny_recipe["loss"].append({"name": "sometimes_inf", "weight": 1.0})
    tiny_recipe["train"].update(on_nan="skip", baseline=False, max_steps_per_epoch=4)
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    record = results.stage("distilled").history[0]
    assert record.skipped_batches == 2
    assert results.stage("teacher").history[0].skipped_batches == 0


def test_adapters_owned_by_a_loss_term_are_trained(tiny_recipe, tmp_path, extra_plugin):
    from kdengine.plugins.features import make_adapter

    seen = {}

    class Hint(LossTerm):
        """FitNets-style hint on the last feature block, through a 1x1 adapter built in setup()."""

        needs_teacher = True

        def student_taps(self):
            return ["features.17"]

        def teacher_taps(self):
            return ["features.17"]

        def setup(self, ctx):
            s, t = ctx.student_features["features.17"], ctx.teacher_features["features.17"]
            self.adapter = make_adapter(s.shape[1], t.shape[1] + 1)
            self.target_channels = t.shape[1]

        def forward(self, ctx):
            mapped = self.adapter(ctx.student_features["features.17"])[:, : self.target_channels]
            seen["weight"] = self.adapter.weight
            return ((mapped - ctx.teacher_features["features.17"]) ** 2).mean()

    extra_plugin(register_loss_terms=lambda register: register("hint", Hint))
    tiny_recipe["loss"].append({"name": "hint", "weight": 1.0})
    tiny_recipe["train"]["baseline"] = False
    initial = {}
    original_setup = Hint.setup

    def recording_setup(self, ctx):
        original_setup(self, ctx)
        initial["weight"] = self.adapter.weight.detach().clone()

    Hint.setup = recording_setup
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    assert "hint" in results.stage("distilled").history[0].losses
    assert not torch.equal(initial["weight"], seen["weight"].detach())


def test_bf16_run(tiny_recipe, tmp_path):
    tiny_recipe["train"].update(mixed_precision="bf16", channels_last=False, baseline=False)
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    assert 0.0 <= results.stage("distilled").best["top1"] <= 1.0
