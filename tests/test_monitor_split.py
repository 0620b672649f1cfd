"""Choices on val, test scored once: the best epoch, the plateau schedule and the reported numbers
(kdengine.train.stage, kdengine.train.context, kdengine.tools.evaluate)."""

from __future__ import annotations

import json

import pytest
from torch.utils.data import Dataset

import kdengine
from kdengine import DataError, KDEngineError, MissingSplitError
from kdengine.cli import main
from kdengine.train.evaluate import Scorer
from kdengine_classification.data import Digits

pytestmark = pytest.mark.usefixtures("one_thread")

#: The monitored metric per epoch on each split: val peaks at epoch 2, test at epoch 3.
VAL = [0.50, 0.80, 0.60]
TEST = [0.50, 0.60, 0.90]


class Marked(Dataset):
    """A split that says which split it is."""

    def __init__(self, data, split):
        self.data, self.split = data, split

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]


@pytest.fixture
def scored(monkeypatch):
    """Mark digits' val and test splits, and make the scorer return VAL / TEST by epoch (the n-th
    call on a split within a stage), recording every call's split."""
    original_val, original_test = Digits.val_set, Digits.test_set
    monkeypatch.setattr(Digits, "val_set", lambda self: Marked(original_val(self), "val"))
    monkeypatch.setattr(Digits, "test_set", lambda self: Marked(original_test(self), "test"))
    calls: list[str] = []

    def score(self, model, loader, channels_last):
        split = loader.dataset.split
        calls.append(split)
        per_epoch = VAL if split == "val" else TEST
        value = per_epoch[(calls.count(split) - 1) % 3]
        return {"top1": value, "top5": 1.0}

    monkeypatch.setattr(Scorer, "__call__", score)
    return calls


def epoch_recipe(tiny_recipe, **train):
    tiny_recipe["train"].update(epochs=3, **train)
    return tiny_recipe


def test_the_best_epoch_is_chosen_on_val_and_test_is_scored_once_per_weights(tiny_recipe, tmp_path, scored):
    results = kdengine.run(epoch_recipe(tiny_recipe), output_dir=tmp_path, progress=False)
    for stage in results.stages:
        assert stage.best_epoch == 2, stage.stage  # val's peak; test's would be epoch 3
        assert stage.best["top1"] == 0.80 and stage.last["top1"] == 0.60
        assert [r.metrics["top1"] for r in stage.history] == VAL
    # Per stage: three epochs on val, then test once with the best weights and once with the last.
    assert scored == (["val"] * 3 + ["test"] * 2) * 3
    assert results.monitor_split == "val"
    table = kdengine.table(results)
    assert "top1 test (val-best)" in table and "top1 val (best)" in table


def test_a_quick_look_on_test_chooses_on_test_and_says_so(tiny_recipe, tmp_path, scored):
    results = kdengine.run(epoch_recipe(tiny_recipe, monitor_split="test"), output_dir=tmp_path, progress=False)
    assert all(stage.best_epoch == 3 for stage in results.stages)
    assert "val" not in scored  # no val split is needed then
    distilled = results.stage("distilled")
    assert distilled.test_best == distilled.best and distilled.test_last == distilled.last
    report = (tmp_path / results.run_dir.split("/")[-1] / "results.md").read_text()
    assert report.startswith("# tiny (seed 0): epochs chosen on the test split")
    assert "top1 test (test-best)" in report and "optimistic" in report


def test_eval_every_skips_epochs_but_always_scores_the_last(tiny_recipe, tmp_path, scored):
    tiny_recipe["train"].update(epochs=3, eval_every=2, baseline=False)
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    distilled = results.stage("distilled")
    assert [bool(r.metrics) for r in distilled.history] == [False, True, True]
    assert distilled.best_epoch == 2  # of the evaluated epochs 2 and 3, val is higher at 2
    assert scored.count("val") == 2 * 2


def test_evaluation_time_is_kept_apart_from_the_epochs_training_time(tiny_recipe, tmp_path, monkeypatch):
    import time

    def slow_score(self, model, loader, channels_last):
        time.sleep(0.3)
        return {"top1": 0.5, "top5": 1.0}

    monkeypatch.setattr(Scorer, "__call__", slow_score)
    tiny_recipe["train"].update(epochs=2, eval_every=2, baseline=False)
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    skipped, evaluated = results.stage("distilled").history
    assert skipped.eval_seconds == 0 and evaluated.eval_seconds >= 0.3
    for record in (skipped, evaluated):  # seconds: the whole epoch, training and evaluation
        assert 0 < record.train_seconds and record.train_seconds + record.eval_seconds <= record.seconds
    assert evaluated.seconds - evaluated.train_seconds >= 0.3
    lines = [json.loads(line) for line in (tmp_path / results.run_dir.split("/")[-1] / "metrics.jsonl").open()]
    assert {"seconds", "train_seconds", "eval_seconds"} <= set(lines[-1])


def test_a_dataset_without_val_stops_before_anything_trains(tiny_recipe, tmp_path, monkeypatch, capsys):
    def no_val(self):
        raise MissingSplitError("Digits has no validation split")

    monkeypatch.setattr(Digits, "val_set", no_val)
    with pytest.raises(DataError, match=r"<dict>: train.monitor_split: dataset 'digits' has no val split"):
        kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no run folder: nothing started
    recipe_file = tmp_path / "tiny.json"
    recipe_file.write_text(json.dumps(tiny_recipe))
    assert main(["validate", str(recipe_file)]) == 2
    err = capsys.readouterr().err
    assert "train.monitor_split" in err and "Traceback" not in err


def test_evaluate_rescores_a_finished_run(tiny_recipe, tmp_path, capsys):
    tiny_recipe["train"]["epochs"] = 2
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    run_dir = results.run_dir
    scores = kdengine.evaluate(run_dir)  # test, best weights: what the run reported
    assert [s.stage for s in scores.stages] == ["teacher", "scratch", "distilled"]
    for score in scores.stages:
        assert score.metrics == pytest.approx(results.stage(score.stage).test_best)
    last_val = kdengine.evaluate(run_dir, split="val", weights="last", stages=["distilled"])
    assert last_val.stages[0].metrics == pytest.approx(results.stage("distilled").last)
    assert main(["evaluate", run_dir, "--stage", "scratch", "--metric", "top5"]) == 0
    out = capsys.readouterr().out
    assert "top5 (test, best weights)" in out and "top1" not in out
    assert main(["evaluate", run_dir, "--stage", "gen9"]) == 2
    err = capsys.readouterr().err
    assert "no stage 'gen9'; this run has: teacher, scratch, distilled" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(KDEngineError, match="--metric"):
        kdengine.evaluate(run_dir, metrics=["top1_typo"])


def test_test_is_scored_with_the_val_best_weights_and_with_the_last(tiny_recipe, tmp_path, monkeypatch):
    """The test scores come from the weights they are labelled with: a test-split score here is a
    fingerprint of the model scored, compared with the stage's best and last checkpoints."""
    from safetensors.torch import load_file

    original_val, original_test = Digits.val_set, Digits.test_set
    monkeypatch.setattr(Digits, "val_set", lambda self: Marked(original_val(self), "val"))
    monkeypatch.setattr(Digits, "test_set", lambda self: Marked(original_test(self), "test"))
    val_calls = []

    def fingerprint(tensors) -> float:
        return float(sum(t.double().sum() for t in tensors))

    def score(self, model, loader, channels_last):
        if loader.dataset.split == "val":
            val_calls.append(1)
            return {"top1": VAL[(len(val_calls) - 1) % 3], "top5": 1.0}
        return {"top1": fingerprint(model.state_dict().values()), "top5": 1.0}

    monkeypatch.setattr(Scorer, "__call__", score)
    results = kdengine.run(epoch_recipe(tiny_recipe), output_dir=tmp_path, progress=False)
    distilled = results.stage("distilled")
    assert distilled.best_epoch == 2
    for which, scored in (("best", distilled.test_best), ("last", distilled.test_last)):
        saved = load_file(f"{results.run_dir}/checkpoints/distilled/{which}.safetensors")
        assert scored["top1"] == pytest.approx(fingerprint(saved.values()), rel=1e-9), which
    assert distilled.test_best["top1"] != pytest.approx(distilled.test_last["top1"], rel=1e-9)
