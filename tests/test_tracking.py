"""Experiment tracking (``train.log_with``): every stage's losses, metrics, lr and epoch time reach
TensorBoard and MLflow (read back from their files in the run folder), a resumed run continues
the same trackers, and bad names or missing packages stop the run before it trains."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

import kdengine
from conftest import TINY_RECIPE
from kdengine import KDEngineError, load_recipe
from kdengine.errors import RecipeError

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 2
STAGE_LOSSES = {"teacher": {"total", "cross_entropy"}, "scratch": {"total", "cross_entropy"},
                "distilled": {"total", "kl_div", "cross_entropy"}}


def tracked_recipe(*trackers: str) -> dict:
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["train"].update(epochs=EPOCHS, log_with=list(trackers))
    return recipe


def expected_tags() -> set[str]:
    tags = set()
    for stage, losses in STAGE_LOSSES.items():
        tags |= {f"{stage}/loss/{name}" for name in losses}
        tags |= {f"{stage}/metric/top1", f"{stage}/metric/top5", f"{stage}/lr", f"{stage}/epoch_seconds",
                 f"{stage}/train_seconds", f"{stage}/eval_seconds", f"{stage}/skipped_batches", f"{stage}/scaler_skipped"}
    return tags


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard folder (all its event files), as (step, value) lists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = run_dir / "tracking" / "tiny"
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def mlflow_client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient((run_dir / "tracking" / "mlruns").resolve().as_uri())


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One run of the tiny recipe with TensorBoard and MLflow."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        out = tmp_path_factory.mktemp("tracked")
        results = kdengine.run(tracked_recipe("tensorboard", "mlflow"), output_dir=out, progress=False)
    return Path(results.run_dir), results


def test_tensorboard_gets_every_stage_and_epoch(tracked_run):
    run_dir, results = tracked_run
    scalars = tensorboard_scalars(run_dir)
    assert set(scalars) == expected_tags()
    assert "teacher/loss/kl_div" not in scalars  # the teacher trains without KD
    for tag, points in scalars.items():
        assert [step for step, _ in points] == list(range(1, EPOCHS + 1)), tag
    history = results.stage("distilled").history
    assert [v for _, v in scalars["distilled/metric/top1"]] == pytest.approx([r.metrics["top1"] for r in history])
    assert [v for _, v in scalars["distilled/loss/kl_div"]] == pytest.approx([r.losses["kl_div"] for r in history])
    assert [v for _, v in scalars["scratch/lr"]] == pytest.approx([r.lr for r in results.stage("scratch").history])
    # The hyperparameters: the resolved recipe, flattened.
    hparams = list((run_dir / "tracking" / "tiny").glob("*/hparams.yml"))
    assert len(hparams) == 1
    text = hparams[0].read_text()
    assert "train.optimizer.lr: 0.05" in text and "loss.0.name: kl_div" in text


def test_mlflow_gets_every_stage_epoch_and_the_recipe(tracked_run, monkeypatch):
    run_dir, results = tracked_run
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the run's file store was set for the run only
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow_client(run_dir)
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert set(run.data.metrics) == expected_tags()
    for key in ("distilled/metric/top1", "teacher/loss/total", "scratch/lr"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, EPOCHS + 1))
    top1 = [m.value for m in client.get_metric_history(run.info.run_id, "teacher/metric/top1")]
    assert top1 == pytest.approx([r.metrics["top1"] for r in results.stage("teacher").history])
    params = run.data.params
    assert params["train.optimizer.lr"] == "0.05" and params["loss.0.name"] == "kl_div"
    assert params["loss.0.params.temperature"] == "4.0" and params["train.log_with"] == '["tensorboard", "mlflow"]'
    state = json.loads((run_dir / "tracking" / "trackers.json").read_text())
    assert state["mlflow"]["run_id"] == run.info.run_id


def test_resume_continues_the_same_trackers(tmp_path, monkeypatch):
    """A run interrupted after the distilled stage's first epoch, then resumed: the same MLflow
    run and TensorBoard folder, every epoch logged exactly once."""
    from kdengine import api as engine
    from kdengine.reporting.tracking import RunTracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original = RunTracking.log_epoch

    def interrupt(self, stage, record):
        original(self, stage, record)
        if stage == "distilled" and record.epoch == 1:
            raise RuntimeError("interrupted")

    monkeypatch.setattr(RunTracking, "log_epoch", interrupt)
    with pytest.raises(RuntimeError, match="interrupted"):
        kdengine.run(tracked_recipe("tensorboard", "mlflow"), output_dir=tmp_path, progress=False)
    monkeypatch.setattr(RunTracking, "log_epoch", original)
    (run_dir,) = tmp_path.iterdir()
    results = engine.resume(run_dir, progress=False)
    assert results.complete and [r.epoch for r in results.stage("distilled").history] == [1, 2]

    scalars = tensorboard_scalars(run_dir)
    assert set(scalars) == expected_tags()
    for tag, points in scalars.items():
        assert [step for step, _ in points] == list(range(1, EPOCHS + 1)), tag
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow_client(run_dir)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED"
    for key in ("teacher/metric/top1", "distilled/metric/top1", "distilled/loss/kl_div"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, EPOCHS + 1))
    assert run.data.params["train.optimizer.lr"] == "0.05"
    assert len(list((run_dir / "tracking" / "tiny").glob("*/hparams.yml"))) == 1  # logged once


def test_unknown_tracker_is_a_recipe_error():
    with pytest.raises(RecipeError) as info:
        load_recipe(tracked_recipe("tensorbord"))
    message = str(info.value)
    assert "train.log_with: unknown tracker 'tensorbord' (did you mean 'tensorboard'?)" in message
    assert "mlflow" in message and "wandb" in message  # the names Accelerate supports
    assert load_recipe(tracked_recipe("mlflow", "mlflow")).train.log_with == ["mlflow"]
    assert load_recipe(copy.deepcopy(TINY_RECIPE)).train.log_with == []


def test_missing_tracker_package_stops_before_training(tmp_path, monkeypatch, capsys):
    from kdengine.reporting import tracking
    from kdengine.cli import main

    monkeypatch.setattr(tracking, "_installed", lambda name: name != "mlflow")
    with pytest.raises(KDEngineError, match=r"train.log_with: 'mlflow' needs a package that is not installed: "
                                            r"pip install mlflow-skinny \(or pip install 'kdengine\[tracking\]'\)"):
        kdengine.run(tracked_recipe("tensorboard", "mlflow"), output_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no run folder: nothing started
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tracked_recipe("mlflow")))
    assert main(["validate", str(path)]) == 2  # the dry run checks it too
    assert "pip install mlflow-skinny" in capsys.readouterr().err


def test_hyperparameters_are_flat_scalars():
    from kdengine.reporting.tracking import hyperparameters

    recipe = tracked_recipe("tensorboard")
    recipe["train"]["report_epochs"] = [1]
    flat = hyperparameters(load_recipe(recipe))
    assert flat["run.name"] == "tiny" and flat["train.epochs"] == EPOCHS
    assert flat["teacher.params.width_mult"] == 0.25 and flat["teacher.params.cifar_stem"] is True
    assert flat["loss.1.name"] == "cross_entropy" and flat["loss.1.weight"] == 0.1
    assert flat["train.report_epochs"] == "[1]" and flat["train.optimizer.momentum"] == 0.9
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())


def test_schema_lists_the_tracker_names():
    from kdengine.recipe.schema import recipe_schema

    schema = recipe_schema()
    items = schema["$defs"]["TrainSpec"]["properties"]["log_with"]["items"]
    assert {"tensorboard", "mlflow", "wandb"} <= set(items["enum"])
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(tracked_recipe("tensorboard"))) == []
    assert list(validator.iter_errors(tracked_recipe("tensorbord")))
