"""kdengine.tools.export and ``kdengine export``: a tiny run's student exported in each format, checked
against PyTorch, adapters dropped, and a model card with the run's numbers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open

from conftest import TINY_RECIPE
from kdengine import KDEngineError
from kdengine.io.weights import read_state_dict
from kdengine.tools.export import TOLERANCES, _max_abs_diff, export_run

FAST = {"throughput_batch": 8, "latency_runs": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run whose distilled stage trained a FitNets adapter beside the student."""
    import kdengine

    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["run"]["name"] = "export"
    recipe["data"]["params"].update(train_size=1700, val_size=48, test_size=None)
    recipe["teacher"]["params"]["width_mult"] = 0.5
    recipe["loss"].append({"name": "fitnets", "weight": 0.1,
                           "params": {"student_layer": "features.4", "teacher_layer": "features.4"}})
    results = kdengine.run(recipe, output_dir=tmp_path_factory.mktemp("runs"), progress=False)
    from pathlib import Path

    return Path(results.run_dir)


def _student(run_dir):
    from kdengine.plugins.catalog import get_catalog
    from kdengine.recipe import load_recipe

    recipe = load_recipe(run_dir / "recipe.json")
    catalog = get_catalog()
    info = catalog.get("dataset", recipe.data.name)(recipe.data.params).info()
    factory = catalog.get("student", recipe.student.name)(recipe.student.params)
    return factory.load(run_dir / "checkpoints" / "distilled" / "best.safetensors", info).eval()


def test_safetensors_export_reloads_exactly_and_has_no_adapter(run_dir, tmp_path):
    report = export_run(run_dir, "safetensors", output_dir=tmp_path, **FAST)
    assert report.path == tmp_path / "student.safetensors" and report.path.is_file()
    assert report.max_abs_diff == 0.0
    distilled = next(s for s in json.loads((run_dir / "results.json").read_text())["stages"] if s["stage"] == "distilled")
    assert "fitnets" in distilled["history"][0]["losses"]  # an adapter trained beside the student...
    student = _student(run_dir)
    state = read_state_dict(report.path)
    assert set(state) == set(student.state_dict())
    assert not any("adapter" in key for key in state)  # ...and is not part of the export
    with safe_open(str(report.path), "pt") as handle:
        spec = json.loads(handle.metadata()["student"])
    assert spec["name"] == "torchvision" and spec["params"]["width_mult"] == 0.25


def test_torchscript_export_matches_pytorch(run_dir, tmp_path):
    report = export_run(run_dir, "torchscript", output_dir=tmp_path, **FAST)
    assert report.max_abs_diff <= TOLERANCES["torchscript"][0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(report.path))
    x = torch.randn(3, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), _student(run_dir)(x), atol=1e-5)


def test_onnx_export_runs_in_onnxruntime_with_matching_outputs(run_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    report = export_run(run_dir, "onnx", output_dir=tmp_path, **FAST)
    assert report.max_abs_diff < 1e-4
    assert report.exported_latency_ms is not None and report.exported_latency_ms > 0
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)  # another batch size: the batch axis is dynamic
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.inference_mode():
        expected = _student(run_dir)(x)
    assert got.shape == (5, 10)
    assert (got - expected).abs().max() < 1e-4


def test_model_card_reports_the_runs_numbers(run_dir, tmp_path):
    report = export_run(run_dir, "safetensors", output_dir=tmp_path, **FAST)
    card = report.card.read_text()
    results = json.loads((run_dir / "results.json").read_text())
    best = {s["stage"]: s["test_best"]["top1"] for s in results["stages"]}  # test, with the val-best weights
    assert f"| top1 (monitored) | {best['teacher']:.4f} | {best['scratch']:.4f} | {best['distilled']:.4f} |" in card
    student = _student(run_dir)
    assert report.student.params == sum(p.numel() for p in student.parameters())
    assert f"{report.student.params:,}" in card and f"{report.teacher.params:,}" in card
    assert report.teacher.params > report.student.params  # the x0.5 teacher is wider
    assert report.student.flops_per_image > 0 and f"{report.student.flops_per_image:,}" in card
    for facts in (report.student, report.teacher):
        assert facts.latency.batch_1_ms > 0 and facts.latency.throughput_batch == 8
    assert "**Task:** classification" in card and "student.safetensors" in card
    saved = json.loads((tmp_path / "export.json").read_text())
    assert saved["file_bytes"] == report.path.stat().st_size


def test_the_check_fails_when_the_export_differs():
    model = torch.nn.Linear(3, 2).eval()
    x = [torch.randn(4, 3)]
    assert _max_abs_diff(lambda b: model(b).detach(), model, x, TOLERANCES["onnx"]) == 0.0
    with pytest.raises(KDEngineError, match="differs from PyTorch"):
        _max_abs_diff(lambda b: model(b).detach() + 1e-2, model, x, TOLERANCES["onnx"])


def test_cli_export_and_its_errors(run_dir, tmp_path, capsys):
    from kdengine.cli import main

    out = tmp_path / "ts"
    assert main(["export", str(run_dir), "--format", "safetensors", "--output", str(out),
                 "--throughput-batch", "4", "--latency-runs", "1"]) == 0
    assert "max |diff| vs PyTorch 0" in capsys.readouterr().out
    assert (out / "MODEL_CARD.md").is_file()
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), "--format", "tflite"])
