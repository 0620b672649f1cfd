"""The key of the teacher-output cache and of the teacher's scores file: every part that fixes the
stored values is keyed and compared on open (so nothing stale is served), and parts that change no
value are not keyed (so they build no second copy)."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

import kdengine
from kdengine.errors import KDEngineError
from kdengine.recipe import load_recipe
from kdengine.teacher import keys
from kdengine.teacher.cache import Layout, TeacherCache
from kdengine.teacher.keys import CacheKey, teacher_key
from kdengine.train.evaluate import Scorer

pytestmark = pytest.mark.usefixtures("one_thread")


def cached_recipe(tiny_recipe: dict, tmp_path) -> dict:
    recipe = copy.deepcopy(tiny_recipe)
    recipe["train"].update(baseline=False)
    recipe["teacher"].update(cache=True, cache_dir=str(tmp_path / "cache"), precision="no")
    return recipe


def cache_folders(root) -> list:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_a_cache_built_for_fewer_steps_is_another_cache_never_read_past_its_end(tiny_recipe, tmp_path):
    recipe = cached_recipe(tiny_recipe, tmp_path)  # 2 steps of 32 rows per epoch
    kdengine.run(recipe, progress=False, output_dir=tmp_path)
    longer = copy.deepcopy(recipe)
    longer["train"]["max_steps_per_epoch"] = 4
    result = kdengine.run(longer, progress=False, output_dir=tmp_path)
    assert result.stage("distilled").history[0].losses["kl_div"] > 0
    folders = cache_folders(tmp_path / "cache")
    assert len(folders) == 2
    sizes = sorted(json.loads((f / "meta.json").read_text())["sizes"] for f in folders)
    assert sizes == [[32, 32], [32, 32, 32, 32]]


def test_the_students_precision_and_the_build_grouping_share_one_cache(tiny_recipe, tmp_path):
    recipe = cached_recipe(tiny_recipe, tmp_path)
    recipe["teacher"]["train"] = {**recipe["teacher"].get("train", {}), "mixed_precision": "no"}  # same teacher weights
    kdengine.run(recipe, progress=False, output_dir=tmp_path)
    other = copy.deepcopy(recipe)
    other["train"]["mixed_precision"] = "bf16"  # the student's; the teacher runs in its own precision ("no")
    other["teacher"]["cache_batch_size"] = 64
    kdengine.run(other, progress=False, output_dir=tmp_path)
    assert len(cache_folders(tmp_path / "cache")) == 1


def unit_context(tiny_recipe: dict):
    recipe = load_recipe(tiny_recipe)
    return SimpleNamespace(recipe=recipe, provider=SimpleNamespace(fingerprint=lambda: {"files": "abc"}))


def test_the_teacher_key_holds_the_model_its_params_the_data_and_the_code_versions(tiny_recipe, monkeypatch):
    ctx = unit_context(tiny_recipe)
    spec = ctx.recipe.teacher
    base = teacher_key(ctx, "teacher", spec, "weights-hash")
    assert base.digest() == teacher_key(ctx, "teacher", spec, "weights-hash").digest()
    wider = spec.model_copy(update={"params": {**spec.params, "width_mult": 0.5}})
    assert teacher_key(ctx, "teacher", wider, "weights-hash").difference(base.recorded()) == ["teacher_model"]
    assert teacher_key(ctx, "student", spec, "weights-hash").digest() != base.digest()
    assert teacher_key(ctx, "teacher", spec, "other-hash").difference(base.recorded()) == ["teacher_weights"]
    code = base.parts["code"]
    assert set(code) == {"torch", "kdengine", "teacher:torchvision", "dataset:digits"}
    assert code["teacher:torchvision"].startswith("classification==")

    monkeypatch.setattr(keys, "kdengine_version", lambda: "99.0")
    assert teacher_key(ctx, "teacher", spec, "weights-hash").difference(base.recorded()) == ["code"]
    monkeypatch.undo()
    ctx.provider = SimpleNamespace(fingerprint=lambda: {"files": "changed"})
    assert teacher_key(ctx, "teacher", spec, "weights-hash").difference(base.recorded()) == ["data_fingerprint"]


def test_opening_compares_every_part_the_layout_and_dtype_included(tmp_path):
    key = CacheKey({"teacher_weights": "w", "seed": 0})
    TeacherCache.open(tmp_path, key, Layout((4, 2), 1), "float16")
    (folder,) = cache_folders(tmp_path)
    meta_file = folder / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["sizes"] = [4, 4]  # a folder whose recorded layout was changed under the same name
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(KDEngineError, match=r"meta\.json: .*differs in sizes.*delete the folder"):
        TeacherCache.open(tmp_path, key, Layout((4, 2), 1), "float16")
    meta["sizes"] = [4, 2]
    meta["parts"]["seed"] = 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(KDEngineError, match=r"differs in seed"):
        TeacherCache.open(tmp_path, key, Layout((4, 2), 1), "float16")
    # another layout or dtype is another folder, not a reuse of this one
    TeacherCache.open(tmp_path, key, Layout((4, 4), 1), "float16")
    TeacherCache.open(tmp_path, key, Layout((4, 2), 1), "bfloat16")
    assert len(cache_folders(tmp_path)) == 3


def test_a_new_plugin_version_rebuilds_the_cache_and_scores_the_teacher_again(tiny_recipe, tmp_path, monkeypatch):
    recipe = copy.deepcopy(tiny_recipe)
    recipe["train"].update(baseline=False)
    trained = kdengine.run(recipe, progress=False, output_dir=tmp_path / "teacher")
    recipe["teacher"].update(checkpoint=f"{trained.run_dir}/checkpoints/teacher/best.safetensors", cache=True,
                             cache_dir=str(tmp_path / "cache"), precision="no")
    recipe["teacher"].pop("train", None)
    kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    assert len(cache_folders(tmp_path / "cache")) == 1
    assert len(list((tmp_path / "cache").glob("scores-*.json"))) == 1

    calls = [0]
    original = Scorer.__call__

    def counted(scorer, *args, **kwargs):
        calls[0] += 1
        return original(scorer, *args, **kwargs)

    monkeypatch.setattr(Scorer, "__call__", counted)
    kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    unchanged = calls[0]
    calls[0] = 0
    real = keys.component_version
    monkeypatch.setattr(keys, "component_version",
                        lambda kind, name: real(kind, name) + (".post1" if kind == "teacher" else ""))
    kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    assert calls[0] == unchanged + 2  # the teacher's val and test passes run again
    assert len(cache_folders(tmp_path / "cache")) == 2
    assert len(list((tmp_path / "cache").glob("scores-*.json"))) == 2
