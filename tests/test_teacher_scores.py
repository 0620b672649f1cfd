"""A given teacher is evaluated once per data and evaluation settings, not once per student: with
the teacher-output cache its val and test scores are remembered next to the cache."""

from __future__ import annotations

import copy

import pytest

import kdengine
from kdengine.train.evaluate import Scorer

pytestmark = pytest.mark.usefixtures("one_thread")


def counting_scorer(monkeypatch) -> list[int]:
    calls = [0]
    original = Scorer.__call__

    def counted(scorer, *args, **kwargs):
        calls[0] += 1
        return original(scorer, *args, **kwargs)

    monkeypatch.setattr(Scorer, "__call__", counted)
    return calls


def test_a_checkpoint_teacher_is_scored_once_and_its_scores_read_by_later_runs(tiny_recipe, tmp_path, monkeypatch):
    recipe = copy.deepcopy(tiny_recipe)
    recipe["train"].update(epochs=1, baseline=False)
    trained = kdengine.run(recipe, progress=False, output_dir=tmp_path / "teacher")
    recipe["teacher"].update(checkpoint=f"{trained.run_dir}/checkpoints/teacher/best.safetensors", cache=True,
                             cache_dir=str(tmp_path / "cache"))
    recipe["teacher"].pop("train", None)

    calls = counting_scorer(monkeypatch)
    first = kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    scored_first, calls[0] = calls[0], 0
    (memo,) = (tmp_path / "cache").glob("scores-*.json")
    other_student = copy.deepcopy(recipe)
    other_student["student"]["params"]["width_mult"] = 0.5
    second = kdengine.run(other_student, progress=False, output_dir=tmp_path / "runs")
    assert calls[0] == scored_first - 2  # the teacher's val and test passes are not run again
    assert second.stage("teacher").test_best == first.stage("teacher").test_best
    assert second.stage("teacher").best == first.stage("teacher").best
    assert second.stage("teacher").params == first.stage("teacher").params
    assert first.stage("teacher").test_best == trained.stage("teacher").test_best  # the same weights' scores

    # A damaged file is only a missed shortcut: the teacher is scored again and the file rewritten.
    memo.write_text("{not json")
    calls[0] = 0
    again = kdengine.run(recipe, progress=False, output_dir=tmp_path / "runs")
    assert calls[0] == scored_first and again.stage("teacher").test_best == first.stage("teacher").test_best
    assert '"test"' in memo.read_text()
    # Other evaluation settings are other scores: another file, the teacher evaluated.
    calls[0] = 0
    other = copy.deepcopy(recipe)
    other["train"]["eval_batch_size"] = 50
    kdengine.run(other, progress=False, output_dir=tmp_path / "runs")
    assert calls[0] == scored_first and len(list((tmp_path / "cache").glob("scores-*.json"))) == 2
