"""The teacher-output cache: cached outputs equal the inline teacher's on the replayed, augmented
batches; training with the cache equals training with the teacher inline; reuse, keys, refusal."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import kdengine
from conftest import interrupt_after_epoch
from kdengine.teacher.precision import TeacherRunner
from kdengine.teacher import cached
from kdengine.teacher.cache import TeacherCache
from kdengine.errors import KDEngineError

pytestmark = pytest.mark.usefixtures("one_thread")

AUGMENT = {"crop_padding": 2, "flip": True, "color_jitter": 0.3, "cutmix_alpha": 1.0, "mixup_alpha": 0.4}

EDGE_RECIPE = {
    "run": {"name": "edge-tiny", "seed": 3},
    "data": {"name": "synthetic_edges", "params": {"size": 32, "train_size": 24, "val_size": 8, "test_size": 8}},
    "teacher": {"name": "unet", "params": {"encoder": "resnet18", "decoder_channels": [16, 16, 8, 8, 8]},
                "train": {"epochs": 1}},
    "student": {"name": "unet", "params": {"encoder": "mobilenet_v2", "decoder_channels": [16, 8, 8, 8, 8]}},
    "train": {"epochs": 2, "batch_size": 8, "optimizer": {"name": "adam", "lr": 3e-4}, "baseline": False,
              "monitor": "dice"},
    "loss": [{"name": "weighted_bce", "weight": 0.5, "params": {"pos_weight": 10.0}},
             {"name": "sigmoid_mse", "weight": 0.5}],
    "metric": [{"name": "dice"}],
}


def classification_recipe(tiny_recipe: dict) -> dict:
    recipe = copy.deepcopy(tiny_recipe)
    recipe["data"]["params"]["augment"] = AUGMENT
    recipe["train"].update(epochs=2, baseline=False)
    return recipe


def record_inline_teacher(monkeypatch) -> list[torch.Tensor]:
    """Every teacher output the engine computes inline, in order (the first is the set-up probe)."""
    seen: list[torch.Tensor] = []
    original = TeacherRunner.__call__

    def spy(runner, inputs):
        output, features = original(runner, inputs)
        seen.append(output.detach().clone())
        return output, features

    monkeypatch.setattr(TeacherRunner, "__call__", spy)
    return seen


def the_cache(root) -> TeacherCache:
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    meta = json.loads((folders[0] / "meta.json").read_text())
    cache = TeacherCache(folders[0], meta)
    return cache


@pytest.mark.parametrize("task", ["classification", "edges"])
def test_cached_outputs_equal_the_inline_teacher_on_replayed_augmented_batches(task, tiny_recipe, tmp_path, monkeypatch):
    recipe = classification_recipe(tiny_recipe) if task == "classification" else copy.deepcopy(EDGE_RECIPE)
    inline_outputs = record_inline_teacher(monkeypatch)
    inline = kdengine.run(recipe, progress=False, output_dir=tmp_path / "inline")
    monkeypatch.undo()
    steps = len(inline_outputs) - 1  # minus the probe
    assert steps == 2 * (recipe["train"].get("max_steps_per_epoch") or 3)

    cached_recipe = copy.deepcopy(recipe)
    cached_recipe["teacher"].update(cache=True, cache_dtype="float32")
    cached = kdengine.run(cached_recipe, progress=False, output_dir=tmp_path / "cached")

    cache = the_cache(tmp_path / "cached" / "teacher-cache")
    per_epoch = steps // 2
    for i, expected in enumerate(inline_outputs[1:]):
        epoch, step = divmod(i, per_epoch)
        got, _ = cache.lookup(epoch + 1, step, None, [], torch.device("cpu"))
        assert torch.equal(got, expected.float()), (epoch + 1, step)
    # The same teacher targets on the same batches: the distilled students are bitwise equal.
    a = load_file(f"{inline.run_dir}/checkpoints/distilled/last.safetensors")
    b = load_file(f"{cached.run_dir}/checkpoints/distilled/last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert inline.stage("distilled").best == cached.stage("distilled").best


def test_half_precision_cache_matches_within_its_rounding(tiny_recipe, tmp_path, monkeypatch):
    recipe = classification_recipe(tiny_recipe)
    inline_outputs = record_inline_teacher(monkeypatch)
    kdengine.run(recipe, progress=False, output_dir=tmp_path / "inline")
    monkeypatch.undo()
    for dtype in ("float16", "bfloat16"):
        cached_recipe = copy.deepcopy(recipe)
        cached_recipe["teacher"].update(cache=True, cache_dtype=dtype, cache_dir=str(tmp_path / dtype))
        kdengine.run(cached_recipe, progress=False, output_dir=tmp_path / "cached")
        cache = the_cache(tmp_path / dtype)
        assert cache.meta["dtype"] == dtype
        got, _ = cache.lookup(2, 1, None, [], torch.device("cpu"))
        expected = inline_outputs[-1].float()
        tolerance = 2 ** -8 if dtype == "float16" else 2 ** -7
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())


def test_a_complete_cache_is_reused_without_loading_the_teacher(tiny_recipe, tmp_path, monkeypatch):
    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"].update(cache=True, cache_dir=str(tmp_path / "cache"))
    first = kdengine.run(recipe, progress=False, output_dir=tmp_path)
    cache = the_cache(tmp_path / "cache")
    stamps = {p: p.stat().st_mtime_ns for p in cache.path.rglob("*.npy")}
    assert len(stamps) == 2  # one output file per epoch

    def no_build(*args, **kwargs):
        raise AssertionError("the cache was built again although it is complete")

    monkeypatch.setattr(TeacherCache, "_build_epoch", no_build)
    monkeypatch.setattr(cached, "check_replayable", no_build)  # only run before loading the teacher
    second = kdengine.run(recipe, progress=False, output_dir=tmp_path)
    assert {p: p.stat().st_mtime_ns for p in cache.path.rglob("*.npy")} == stamps
    assert first.stage("distilled").best == second.stage("distilled").best
    # Another student on the same teacher and data stream reads the same cache.
    other = copy.deepcopy(recipe)
    other["student"]["params"]["width_mult"] = 0.5
    kdengine.run(other, progress=False, output_dir=tmp_path)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_a_longer_student_extends_the_cache_epoch_by_epoch(tiny_recipe, tmp_path):
    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"].update(cache=True, cache_dir=str(tmp_path / "cache"))
    kdengine.run(recipe, progress=False, output_dir=tmp_path)
    longer = copy.deepcopy(recipe)
    longer["train"]["epochs"] = 3
    longer["teacher"]["train"] = {"epochs": 2}  # the same teacher as before
    kdengine.run(longer, progress=False, output_dir=tmp_path)
    cache = the_cache(tmp_path / "cache")
    assert cache.missing(3) == []


def test_other_settings_make_another_cache_and_a_tampered_one_is_refused(tiny_recipe, tmp_path):
    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"].update(cache=True, cache_dir=str(tmp_path / "cache"))
    kdengine.run(recipe, progress=False, output_dir=tmp_path)
    other_seed = copy.deepcopy(recipe)
    other_seed["run"]["seed"] = 1  # another augmentation stream (and another teacher)
    kdengine.run(other_seed, progress=False, output_dir=tmp_path)
    folders = sorted(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert len(folders) == 2

    (first,) = [f for f in folders if json.loads((f / "meta.json").read_text())["parts"]["seed"] == 0]
    meta_file = first / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["parts"]["batch_size"] = 999  # the folder of the seed-0 run now claims another batch size
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(KDEngineError, match=r"meta\.json: .*batch_size.*delete the folder"):
        kdengine.run(recipe, progress=False, output_dir=tmp_path)


def test_augmentation_drawing_from_an_unseeded_generator_is_refused(tiny_recipe, tmp_path, monkeypatch):
    from kdengine_classification.data import Digits

    def numpy_noise(self, inputs, targets):
        return inputs + torch.from_numpy(np.random.rand(*inputs.shape).astype("float32")), targets

    monkeypatch.setattr(Digits, "batch_augment", numpy_noise)
    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"]["cache"] = True
    with pytest.raises(KDEngineError, match=r"teacher\.cache.*torch's generator"):
        kdengine.run(recipe, progress=False, output_dir=tmp_path)


def test_cache_teacher_command_builds_the_cache_a_run_then_uses(tiny_recipe, tmp_path):
    recipe = classification_recipe(tiny_recipe)
    trained = kdengine.run(recipe, progress=False, output_dir=tmp_path / "first")
    checkpoint = f"{trained.run_dir}/checkpoints/teacher/best.safetensors"
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(f"""
[run]
name = "cached"
seed = 0
[data]
name = "digits"
params = {{ image_size = 8, train_size = 200, val_size = 200, test_size = 200, augment = {{ crop_padding = 2, flip = true, cutmix_alpha = 1.0 }} }}
[teacher]
name = "torchvision"
params = {{ model = "mobilenet_v2", width_mult = 0.25, cifar_stem = true }}
checkpoint = "{checkpoint}"
cache = true
[student]
name = "torchvision"
params = {{ model = "mobilenet_v2", width_mult = 0.25, cifar_stem = true }}
[train]
epochs = 2
batch_size = 32
max_steps_per_epoch = 2
baseline = false
optimizer = {{ name = "sgd", lr = 0.05 }}
[[loss]]
name = "kl_div"
weight = 0.9
[[loss]]
name = "cross_entropy"
weight = 0.1
[[metric]]
name = "top1"
""")
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "kdengine", "cache-teacher", str(recipe_file), "--output-dir", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 epochs" in done.stdout
    cache = the_cache(out / "teacher-cache")
    assert cache.missing(2) == []
    stamps = {p: p.stat().st_mtime_ns for p in cache.path.rglob("*.npy")}
    kdengine.run(recipe_file, progress=False, output_dir=out)
    assert {p: p.stat().st_mtime_ns for p in cache.path.rglob("*.npy")} == stamps

    trains_teacher = tmp_path / "no-checkpoint.toml"
    trains_teacher.write_text(recipe_file.read_text().replace(f'checkpoint = "{checkpoint}"\n', ""))
    done = subprocess.run([sys.executable, "-m", "kdengine", "cache-teacher", str(trains_teacher)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "teacher.checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_validate_says_when_augmentation_cannot_be_replayed(tiny_recipe, monkeypatch):
    from kdengine.tools.validate import dry_run
    from kdengine_classification.data import Digits

    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"]["cache"] = True
    assert dry_run(recipe).models  # the built-in augmentation replays

    def numpy_noise(self, inputs, targets):
        return inputs + torch.from_numpy(np.random.rand(*inputs.shape).astype("float32")), targets

    monkeypatch.setattr(Digits, "batch_augment", numpy_noise)
    with pytest.raises(KDEngineError, match=r"teacher\.cache.*cannot|teacher\.cache.*does not seed"):
        dry_run(recipe)


def test_teacher_precision_auto_measures_and_keeps_the_fastest(tiny_recipe, tmp_path, monkeypatch, capsys):
    from kdengine.teacher import precision as inference
    from kdengine.tools.validate import dry_run

    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"]["precision"] = "auto"
    report = dry_run(recipe)
    assert set(report.teacher_inference) == {"fp32, contiguous", "fp32, channels_last", "bf16, contiguous",
                                             "bf16, channels_last"}
    assert any("<- fastest, used" in line for line in report.lines())

    # In a run, the measured fastest setting is the one the teacher then uses on every batch.
    chosen = []
    original_choose = inference.choose

    def fixed_timings(runner, options, inputs, rows=32, repeats=2):
        original_choose(runner, options, inputs, rows, 1)  # really runs every option
        seen_dtypes.clear()
        timings = {o: (0.001 if (o.precision, o.channels_last) == ("bf16", False) else 1.0) for o in options}
        runner.use(min(timings, key=timings.get))
        chosen.append(runner.setting)
        return timings

    monkeypatch.setattr(inference, "choose", fixed_timings)
    seen_dtypes = []
    original_call = inference.TeacherRunner.__call__

    def spy(self, inputs):
        output, features = original_call(self, inputs)
        seen_dtypes.append(output.dtype)
        return output, features

    monkeypatch.setattr(inference.TeacherRunner, "__call__", spy)
    kdengine.run(recipe, progress=True, output_dir=tmp_path)
    assert chosen == [inference.InferenceSetting("bf16", False)]
    assert seen_dtypes and set(seen_dtypes) == {torch.bfloat16}
    assert "teacher inference: bf16, contiguous" in capsys.readouterr().err


def test_layout_gives_each_process_its_contiguous_share_of_a_step():
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    from kdengine.teacher.cache import Layout

    layout = Layout((8, 8, 8), num_processes=2)
    assert layout.rows == 24
    assert [layout.share(0, p) for p in (0, 1)] == [(0, 4), (4, 8)]
    assert [layout.share(2, p) for p in (0, 1)] == [(16, 20), (20, 24)]
    # Accelerate's split_batches hands process p the same contiguous rows of the global batch
    # (the engine drops the last partial batch whenever there is more than one).
    batches = BatchSampler(range(27), batch_size=8, drop_last=True)
    for process in (0, 1):
        shard = BatchSamplerShard(batches, num_processes=2, process_index=process, split_batches=True)
        seen = list(shard)
        assert len(seen) == 3
        for step, rows in enumerate(seen):
            start, stop = layout.share(step, process)
            assert rows == list(range(start, stop))


def force_teacher_setting(monkeypatch, precision: str, channels_last: bool) -> list:
    """Make ``teacher.precision = "auto"`` choose ``(precision, channels_last)``; returns the
    settings chosen, one per measurement."""
    from kdengine.teacher import precision as inference

    chosen = []

    def forced(runner, options, inputs, rows=32, repeats=2):
        if len(options) == 1:  # nothing to measure, as in choose()
            runner.use(options[0])
            return {}
        timings = {o: (0.001 if (o.precision, o.channels_last) == (precision, channels_last) else 1.0)
                   for o in options}
        runner.use(min(timings, key=timings.get))
        chosen.append(runner.setting)
        return timings

    monkeypatch.setattr(inference, "choose", forced)
    return chosen


def test_auto_precision_keys_the_cache_by_the_setting_it_chose_and_records_it(tiny_recipe, tmp_path, monkeypatch):
    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"].update(cache=True, precision="auto", train={"epochs": 1})
    for precision, channels_last in (("bf16", False), ("no", True)):  # two machines, two fastest settings
        recipe["teacher"]["cache_dir"] = str(tmp_path / f"cache-{precision}")
        chosen = force_teacher_setting(monkeypatch, precision, channels_last)
        results = kdengine.run(recipe, progress=False, output_dir=tmp_path / precision)
        assert [(s.precision, s.channels_last) for s in chosen] == [(precision, channels_last)]  # measured once
        recorded = json.loads((tmp_path / precision / Path(results.run_dir).name / "results.json").read_text())
        distilled = next(s for s in recorded["stages"] if s["stage"] == "distilled")
        assert distilled["teacher_inference"] == {"precision": precision, "channels_last": channels_last}
        meta = json.loads((the_cache(tmp_path / f"cache-{precision}").path / "meta.json").read_text())
        assert meta["parts"]["teacher_inference"] == [precision, channels_last]
        monkeypatch.undo()


def test_auto_precision_reads_the_cache_a_candidate_setting_already_built(tiny_recipe, tmp_path, monkeypatch):
    """A near tie measured the other way must not build a second cache of the same teacher: the
    built one is read, without measuring, and its setting is the one recorded."""
    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"].update(cache=True, cache_dir=str(tmp_path / "cache"), precision="auto", train={"epochs": 1})
    force_teacher_setting(monkeypatch, "bf16", False)
    kdengine.run(recipe, progress=False, output_dir=tmp_path / "first")
    monkeypatch.undo()
    built = the_cache(tmp_path / "cache")

    def no_build(*args, **kwargs):
        raise AssertionError("a second cache was built although a candidate's is complete")

    chosen = force_teacher_setting(monkeypatch, "no", True)  # this run would measure otherwise
    monkeypatch.setattr(TeacherCache, "_build_epoch", no_build)
    other = copy.deepcopy(recipe)
    other["student"]["params"]["width_mult"] = 0.5  # another student of the same teacher and stream
    results = kdengine.run(other, progress=False, output_dir=tmp_path / "second")
    assert chosen == []  # not measured
    assert the_cache(tmp_path / "cache").path == built.path
    assert results.stage("distilled").teacher_inference == {"precision": "bf16", "channels_last": False}
    monkeypatch.undo()
    # a longer student extends that cache in its setting, instead of starting another
    chosen = force_teacher_setting(monkeypatch, "no", True)
    longer = copy.deepcopy(recipe)
    longer["train"]["epochs"] = 3
    kdengine.run(longer, progress=False, output_dir=tmp_path / "third")
    assert chosen == [] and the_cache(tmp_path / "cache").missing(3) == []


def test_a_resumed_stage_keeps_the_teacher_setting_auto_chose(tiny_recipe, tmp_path, monkeypatch):
    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"].update(precision="auto", train={"epochs": 1})
    force_teacher_setting(monkeypatch, "bf16", True)
    interrupt_after_epoch(monkeypatch, "distilled", 1)
    with pytest.raises(RuntimeError, match="interrupted"):
        kdengine.run(recipe, progress=False, output_dir=tmp_path)
    monkeypatch.undo()
    chosen = force_teacher_setting(monkeypatch, "no", False)  # this machine would measure otherwise
    (run_dir,) = tmp_path.iterdir()
    results = kdengine.resume(run_dir, progress=False)
    assert chosen == []  # not measured again
    assert results.stage("distilled").teacher_inference == {"precision": "bf16", "channels_last": True}


def test_validate_predicts_the_size_the_cache_then_takes_on_disk(tiny_recipe, tmp_path):
    from kdengine.tools.validate import dry_run

    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"].update(cache=True, cache_dir=str(tmp_path / "cache"), train={"epochs": 1})
    recipe["loss"].append({"name": "fitnets", "weight": 0.1,  # a tapped (8, 8, 8) feature: most of the bytes
                           "params": {"student_layer": "features.0", "teacher_layer": "features.0"}})
    (estimate,) = dry_run(recipe).caches
    kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    cache = the_cache(tmp_path / "cache")
    assert estimate.bytes == cache.size_bytes()  # every stored array, headers included
    on_disk = sum(p.stat().st_size for p in cache.path.rglob("*") if p.is_file())  # with meta.json
    assert estimate.bytes == pytest.approx(on_disk, rel=0.03)


@pytest.mark.parametrize("factor, problem", [(1e6, r'teacher.cache_dtype = "float16": .* reaches .* set '
                                                    r'teacher.cache_dtype = "bfloat16" or "float32"'),
                                             (float("nan"), r"teacher.cache: the teacher's output holds NaN")])
def test_a_cache_refuses_teacher_values_it_cannot_hold(tiny_recipe, tmp_path, monkeypatch, factor, problem):
    original = TeacherRunner.__call__

    def scaled(runner, inputs):
        output, features = original(runner, inputs)
        return output * factor, features

    monkeypatch.setattr(TeacherRunner, "__call__", scaled)
    recipe = classification_recipe(tiny_recipe)
    recipe["teacher"].update(cache=True, cache_dtype="float16", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(KDEngineError, match=problem):
        kdengine.run(recipe, progress=False, output_dir=tmp_path)
    assert the_cache(tmp_path / "cache").missing(2) == [1, 2]
    assert not list((tmp_path / "cache").rglob("*.npy"))  # the half-written epoch is gone
    if factor == factor:  # finite: bfloat16 holds what float16 cannot
        recipe["teacher"]["cache_dtype"] = "bfloat16"
        kdengine.run(recipe, progress=False, output_dir=tmp_path)


def test_cache_views_replays_fewer_epochs_of_batches_than_the_student_trains(tiny_recipe, tmp_path, monkeypatch):
    from kdengine.tools.validate import dry_run
    from kdengine.train import stage

    recipe = classification_recipe(tiny_recipe)
    recipe["train"]["epochs"] = 3
    recipe["teacher"].update(cache=True, cache_dtype="float32", cache_dir=str(tmp_path / "cache"), cache_views=2,
                             train={"epochs": 1})
    (estimate,) = dry_run(recipe).caches
    assert estimate.epochs == 2
    looked_up, student_inputs = [], []
    original_lookup, original_step = TeacherCache.lookup, stage.train_step

    def lookup(cache, epoch, *args, **kwargs):
        looked_up.append(epoch)
        return original_lookup(cache, epoch, *args, **kwargs)

    def train_step(*args, **kwargs):
        if args[0] is not None and looked_up:  # the distilled stage (the teacher's own reads no cache)
            student_inputs.append(args[7].clone())
        return original_step(*args, **kwargs)

    monkeypatch.setattr(TeacherCache, "lookup", lookup)
    monkeypatch.setattr(stage, "train_step", train_step)
    kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    monkeypatch.undo()

    cache = the_cache(tmp_path / "cache")
    assert cache.missing(2) == [] and not cache.has_epoch(3)  # the teacher ran on two epochs of data
    assert estimate.bytes == cache.size_bytes()
    steps = len(student_inputs) // 3
    assert looked_up[-3 * steps:] == [1] * steps + [2] * steps + [1] * steps
    first, second, third = (student_inputs[i * steps:(i + 1) * steps] for i in range(3))
    # epoch 3 trains on epoch 1's order and augmentation draws, which the cache's outputs are for
    assert all(torch.equal(a, c) for a, c in zip(first, third))
    assert not any(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(KDEngineError, match="cache_views: only the teacher-output cache"):
        kdengine.run({**recipe, "teacher": {**recipe["teacher"], "cache": False}}, progress=False,
                     output_dir=tmp_path / "refused")


def test_a_teacher_without_a_weights_file_is_keyed_by_its_state_including_zero_dim_buffers():
    from kdengine.teacher.cache import tensor_digest

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))  # num_batches_tracked is 0-d
    digest = tensor_digest(model)
    model[1].num_batches_tracked += 1
    assert tensor_digest(model) != digest
