"""kdengine.quantize and ``kdengine export --quantize int8 / --stage``: static int8 ONNX models of a
tiny classifier, super-resolution and edge model, close to fp32 in onnxruntime and scored beside it
on the card; dense models with a dynamic height and width; any stage of a run folder."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_RECIPE
from kdengine import KDEngineError
from kdengine.errors import CheckpointError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from kdengine.tools.card import file_size  # noqa: E402
from kdengine.tools.export import export_run  # noqa: E402
from kdengine.tools.quantize import Int8DropWarning, metric_drops  # noqa: E402

FAST = {"throughput_batch": 4, "latency_runs": 2, "calibration_images": 32}
pytestmark = pytest.mark.usefixtures("one_thread")

TINY_UNET = {"encoder": "mobilenet_v2", "encoder_depth": 3, "decoder_channels": [8, 8, 8]}
EDGE_RECIPE = {
    "run": {"name": "edge-int8", "seed": 0},
    "data": {"name": "synthetic_edges", "params": {"size": 32, "train_size": 24, "val_size": 8, "test_size": 8}},
    "teacher": {"name": "unet", "params": TINY_UNET},
    "student": {"name": "unet", "params": TINY_UNET},
    "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 3, "baseline": False,
              "optimizer": {"name": "adam", "lr": 1e-3}},
    "loss": [{"name": "weighted_bce", "weight": 0.5}, {"name": "sigmoid_mse", "weight": 0.5}],
    "metric": [{"name": "dice"}, {"name": "ods_ois", "params": {"thresholds": 5}}],
}
SR_RECIPE = {
    "run": {"name": "sr-int8", "seed": 0},
    # coins is 303 x 384: a 75 x 96 LR evaluation image, in one tile
    "data": {"name": "skimage_sr", "params": {"scale": 4, "patch": 32, "patches_per_image": 4, "tile": 0,
                                              "train_images": ["coffee", "camera"], "val_images": ["moon"],
                                              "test_images": ["coins"]}},
    "teacher": {"name": "attention_srnet", "params": {"blocks": 1, "channels": 4}},
    "student": {"name": "attention_srnet", "params": {"blocks": 1, "channels": 4}},
    "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 1, "max_steps_per_epoch": 3, "baseline": False,
              "optimizer": {"name": "adam", "lr": 1e-3}},
    "loss": [{"name": "l1"}, {"name": "teacher_l1", "weight": 0.5}],
    "metric": [{"name": "psnr_y", "params": {"scale": 4}}],
}
GEN = {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True}}


def _train(recipe: dict, tmp_path_factory) -> Path:
    import kdengine

    results = kdengine.run(recipe, output_dir=tmp_path_factory.mktemp("runs"), progress=False)
    return Path(results.run_dir)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["run"]["name"] = "int8"
    recipe["train"].update(baseline=False, max_steps_per_epoch=6)
    return _train(recipe, tmp_path_factory)


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["run"]["name"] = "chain"
    recipe.pop("student")
    recipe["generation"] = [{"name": "gen2", "student": GEN}, {"name": "gen3", "student": GEN}]
    recipe["train"].update(baseline=True, max_steps_per_epoch=1)
    return _train(recipe, tmp_path_factory)


def _provider(run_dir: Path):
    from kdengine.plugins.catalog import get_catalog
    from kdengine.recipe import load_recipe

    recipe = load_recipe(run_dir / "recipe.json")
    return recipe, get_catalog().get("dataset", recipe.data.name)(recipe.data.params)


def _model(run_dir: Path, stage: str = "distilled"):
    from kdengine.plugins.catalog import get_catalog

    recipe, provider = _provider(run_dir)
    spec = recipe.student or next(g.student for g in recipe.generation if g.name == stage.removesuffix("-scratch"))
    factory = get_catalog().get("student", spec.name)(spec.params)
    return factory.load(run_dir / "checkpoints" / stage / "best.safetensors", provider.info()).eval()


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _weight_scales(path: Path) -> list[int]:
    """The number of scales of each quantised weight (QDQ: a DequantizeLinear fed by an initializer)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    sizes = []
    for node in model.graph.node:
        weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None and weight.data_type == onnx.TensorProto.INT8:
            sizes.append(int(np.prod(inits[node.input[1]].dims)))  # a scalar scale has dims () -> 1
    return sizes


# ---------------------------------------------------------------------------------------------
# the classifier


def test_int8_classifier_is_close_to_fp32_and_the_card_compares_them(classifier_run, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", Int8DropWarning)  # no limit crossed: no warning
        report = export_run(classifier_run, "onnx", output_dir=tmp_path, quantize="int8", max_drop={"top1": 2.0},
                            **FAST)
    int8 = report.int8
    assert int8.max_drop == {"top1": 2.0} and int8.exceeded() == {}
    assert int8 is not None and int8.calibration_images == 32
    fp32_session, int8_session = _session(report.path), _session(tmp_path / "student.int8.onnx")
    assert fp32_session.get_inputs()[0].shape == ["batch", 1, 8, 8]  # a classifier: only the batch is dynamic
    assert int8_session.get_inputs()[0].shape == ["batch", 1, 8, 8]
    _, provider = _provider(classifier_run)
    eval_set = provider.test_set()
    x = torch.stack([eval_set[i][0] for i in range(64)])
    fp32, quantised = _run(fp32_session, x), _run(int8_session, x)
    # Tolerance: logits within 10 % of the largest fp32 logit, and nearly the same predictions.
    assert (quantised - fp32).abs().max() <= 0.1 * fp32.abs().max()
    assert (quantised.argmax(1) == fp32.argmax(1)).float().mean() >= 0.9
    weight_scales = _weight_scales(tmp_path / "student.int8.onnx")
    assert weight_scales and max(weight_scales) > 1  # one scale per output channel

    # fp32 in onnxruntime scores what the engine scored for the same weights on the same split
    results = json.loads((classifier_run / "results.json").read_text())
    best = next(s for s in results["stages"] if s["stage"] == "distilled")["test_best"]  # test, with the val-best weights
    assert int8.fp32.metrics == pytest.approx({"top1": best["top1"], "top5": best["top5"]}, abs=1e-6)
    assert set(int8.int8.metrics) == {"top1", "top5"}
    assert int8.int8.file_bytes < 0.6 * int8.fp32.file_bytes
    card = report.card.read_text()
    for name in ("top1", "top5"):
        assert (f"| {name} (test) | {int8.fp32.metrics[name]:.4f} | {int8.int8.metrics[name]:.4f} |") in card
    assert f"| file size | {file_size(int8.fp32.file_bytes)} | {file_size(int8.int8.file_bytes)} |" in card
    assert f"| CPU latency, batch 1 (onnxruntime, median) | {int8.fp32.latency.batch_1_ms:.2f} ms | " \
           f"{int8.int8.latency.batch_1_ms:.2f} ms |" in card
    assert "| CPU latency, batch 4 (onnxruntime, median) |" in card
    assert "calibrated on 32 images of the train split" in card
    assert "**Warning:**" not in card
    saved = json.loads((tmp_path / "export.json").read_text())
    assert saved["int8"]["int8"]["file_bytes"] == (tmp_path / "student.int8.onnx").stat().st_size


def test_max_drop_warns_and_the_cli_prints_the_comparison(classifier_run, tmp_path, capsys):
    from kdengine.cli import main

    with pytest.warns(Int8DropWarning, match=r"int8 top1 drops by -?[0-9.e-]+ from fp32 .*more than --max-drop -1000"):
        assert main(["export", str(classifier_run), "--format", "onnx", "--output", str(tmp_path), "--quantize", "int8",
                     "--calibration-images", "16", "--max-drop", "-1000", "--max-drop", "top5=5", "--per-tensor",
                     "--throughput-batch", "4", "--latency-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "int8: student.int8.onnx" in out
    assert "top1 (test): fp32" in out and "OVER --max-drop" in out.split("top1 (test)")[1].split("\n")[0]
    assert "OVER" not in out.split("top5 (test)")[1].split("\n")[0]  # a drop of 5 is allowed
    assert "**Warning:** int8 top1 drops by" in (tmp_path / "MODEL_CARD.md").read_text()
    assert set(_weight_scales(tmp_path / "student.int8.onnx")) == {1}  # --per-tensor: one scale per weight


def test_a_drop_is_positive_when_int8_is_worse_in_either_direction():
    higher = {"psnr": True, "loss": False}
    assert metric_drops({"psnr": 30.0, "loss": 0.2}, {"psnr": 29.5, "loss": 0.3}, higher) == \
        pytest.approx({"psnr": 0.5, "loss": 0.1})
    assert metric_drops({"psnr": 30.0, "loss": 0.2}, {"psnr": 30.5, "loss": 0.1}, higher) == \
        pytest.approx({"psnr": -0.5, "loss": -0.1})


def test_quantisation_option_errors(classifier_run, tmp_path):
    with pytest.raises(KDEngineError, match="--quantize int8 needs --format onnx"):
        export_run(classifier_run, "torchscript", output_dir=tmp_path, quantize="int8")
    with pytest.raises(KDEngineError, match="--quantize: unknown mode 'int4'"):
        export_run(classifier_run, "onnx", output_dir=tmp_path, quantize="int4")
    with pytest.raises(KDEngineError, match="--max-drop compares the int8 model with the fp32 one"):
        export_run(classifier_run, "onnx", output_dir=tmp_path, max_drop=0.1)
    with pytest.raises(KDEngineError, match="--calibration-images: must be at least 1"):
        export_run(classifier_run, "onnx", output_dir=tmp_path, quantize="int8", calibration_images=0)
    assert not list(tmp_path.iterdir())  # these are checked before anything is written
    # Metric names are checked against what the metrics return (a dict-valued metric need not
    # declare its keys), before anything is quantised.
    with pytest.raises(KDEngineError, match="--max-drop: the recipe's metrics report no 'ods'; they report top1, top5"):
        export_run(classifier_run, "onnx", output_dir=tmp_path, quantize="int8", max_drop={"ods": 0.1}, **FAST)
    assert not (tmp_path / "student.int8.onnx").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter, as kdengine.export uses
def test_a_failed_shape_inference_falls_back_and_leaves_the_working_directory_clean(tmp_path, monkeypatch):
    import onnxruntime.quantization.shape_inference as shape_inference

    from kdengine.tools.quantize import quantize_model

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten()).eval()
    fp32 = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(fp32), input_names=["input"], dynamo=False)
    original = shape_inference.quant_pre_process

    def incomplete(*args, skip_symbolic_shape=False, **kwargs):
        if not skip_symbolic_shape:  # what onnxruntime does when symbolic inference is incomplete
            Path("sym_shape_infer_temp.onnx").write_bytes(b"partial")
            raise Exception("Incomplete symbolic shape inference")
        return original(*args, skip_symbolic_shape=True, **kwargs)

    monkeypatch.setattr(shape_inference, "quant_pre_process", incomplete)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    settings = quantize_model(fp32, tmp_path / "model.int8.onnx", [np.random.rand(1, 1, 8, 8).astype(np.float32)], True)
    assert settings["weights"] == "int8, one scale per output channel"
    assert (tmp_path / "model.int8.onnx").is_file() and not list(workdir.iterdir())


# ---------------------------------------------------------------------------------------------
# dense models: dynamic height and width


# ods comes from a metric that returns {"ods", "ois"} without declaring its keys
@pytest.mark.parametrize("recipe, output_tolerance, max_drop",
                         [(SR_RECIPE, 0.05, 1.0), (EDGE_RECIPE, 0.15, {"ods": 1.0})], ids=["superres", "edges"])
def test_dense_int8_export_has_dynamic_height_and_width(recipe, output_tolerance, max_drop, tmp_path_factory, tmp_path):
    run_dir = _train(copy.deepcopy(recipe), tmp_path_factory)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Int8DropWarning)
        report = export_run(run_dir, "onnx", output_dir=tmp_path, quantize="int8", max_drop=max_drop, **FAST)
    assert report.int8.max_drop == ({"psnr_y": 1.0} if max_drop == 1.0 else max_drop)
    assert report.dense
    assert report.checked_shapes[0][2:] != report.checked_shapes[1][2:]  # the export check used two sizes
    model = _model(run_dir)
    _, provider = _provider(run_dir)
    image = provider.test_set()[0][0][None]
    fp32_session, int8_session = _session(report.path), _session(tmp_path / "student.int8.onnx")
    for session in (fp32_session, int8_session):
        assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    for size in (tuple(image.shape[-2:]), (image.shape[-2] - 8, image.shape[-1] + 24)):
        x = torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)
        with torch.inference_mode():
            expected = model(x)
        fp32, quantised = _run(fp32_session, x), _run(int8_session, x)
        assert fp32.shape == quantised.shape == expected.shape
        assert (fp32 - expected).abs().max() <= 1e-4 + 1e-3 * expected.abs().max()
        # Tolerance: int8 outputs within output_tolerance x the largest fp32 output.
        assert (quantised - expected).abs().max() <= output_tolerance * expected.abs().max()
    results = json.loads((run_dir / "results.json").read_text())
    best = next(s for s in results["stages"] if s["stage"] == "distilled")["test_best"]
    assert report.int8.fp32.metrics == pytest.approx(best, abs=1e-3)
    assert set(report.int8.int8.metrics) == set(best)
    card = report.card.read_text()
    assert "(batch, height and width dynamic)" in card
    for name, value in report.int8.int8.metrics.items():
        assert f"| {name} (test) | {report.int8.fp32.metrics[name]:.4f} | {value:.4f} |" in card


# ---------------------------------------------------------------------------------------------
# --stage


def test_stage_exports_a_generation_of_a_progressive_run(chain_run, tmp_path):
    from kdengine.io.weights import read_state_dict

    report = export_run(chain_run, "safetensors", output_dir=tmp_path, stage="gen2",
                        throughput_batch=4, latency_runs=1)
    exported = read_state_dict(report.path)
    trained = read_state_dict(chain_run / "checkpoints" / "gen2" / "best.safetensors")
    gen3 = read_state_dict(chain_run / "checkpoints" / "gen3" / "best.safetensors")
    assert set(exported) == set(trained) and all(torch.equal(exported[k], trained[k]) for k in trained)
    assert not all(torch.equal(exported[k], gen3[k]) for k in gen3)  # gen2's weights, not another stage's
    results = json.loads((chain_run / "results.json").read_text())
    best = {s["stage"]: s["test_best"]["top1"] for s in results["stages"]}
    card = report.card.read_text()
    assert card.startswith("# chain: gen2 (safetensors)") and "- **Stage:** gen2" in card
    # the generation beside its own scratch baseline
    assert f"| top1 (monitored) | {best['teacher']:.4f} | {best['gen2-scratch']:.4f} | {best['gen2']:.4f} |" in card
    teacher = export_run(chain_run, "safetensors", output_dir=tmp_path / "teacher", stage="teacher",
                         throughput_batch=4, latency_runs=1)
    assert teacher.student.role == "teacher" and "- **Model:**" in teacher.card.read_text()


def test_unknown_stage_lists_the_stages_of_the_run(chain_run, capsys):
    with pytest.raises(CheckpointError, match=r"no stage 'distilled' with weights in this run folder; it has: "
                                              r"teacher, gen2-scratch, gen2, gen3-scratch, gen3$"):
        export_run(chain_run, "onnx")  # a progressive run has no 'distilled' stage
    from kdengine.cli import main

    assert main(["export", str(chain_run), "--format", "onnx", "--stage", "gen9"]) == 2
    assert "no stage 'gen9'" in capsys.readouterr().err


def test_int8_export_without_the_extra_names_the_extra_to_install(classifier_run, tmp_path, monkeypatch, capsys):
    """After the README's plain install (no onnx, no onnxruntime), ``--quantize int8`` says which
    extra to install, exit 2, before anything is written."""
    import sys

    from kdengine.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # an import of it raises ImportError
    out = tmp_path / "export"
    assert main(["export", str(classifier_run), "--format", "onnx", "--quantize", "int8", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--quantize int8 needs the export extra" in err and 'pip install "kdengine[export]"' in err
    assert "Traceback" not in err and not out.exists()
