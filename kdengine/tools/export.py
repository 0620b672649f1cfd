"""``kdengine export``: one stage's model of a run, as a deployable file with a model card.

The model is rebuilt from ``RUN_DIR/recipe.json`` and loaded from
``RUN_DIR/checkpoints/<stage>/best.safetensors`` (``--stage``, default ``distilled``; any stage the
run folder holds: ``teacher``, ``scratch``, a progressive chain's generations). That checkpoint
holds the model alone: the adapters and heads that feature losses train beside it live in the
loss terms and are never saved there, so they are dropped by construction. The exported file is
then checked against the PyTorch model on sample inputs (real evaluation images when the dataset
is present, plus random inputs at another batch size and, for dense models whose output is an
image, at another height and width):

=============  ==========================================  ===========================
format         checked with                                tolerance (|a - b| <= ...)
=============  ==========================================  ===========================
onnx           onnxruntime (CPUExecutionProvider)          1e-4 + 1e-3 * |b|
torchscript    ``torch.jit.load``                          1e-5 + 1e-5 * |b|
safetensors    rebuilt from the recipe and reloaded        exact
=============  ==========================================  ===========================

ONNX files have a dynamic batch axis; dense models (output ``B x C x H' x W'``, e.g. super-resolution
and edge maps) also a dynamic height and width. ``quantize="int8"`` adds a static int8 ONNX model
beside the fp32 one (:mod:`kdengine.quantize`). A model card (``MODEL_CARD.md``) and the same
numbers as ``export.json`` are written beside the file.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdengine.plugins.catalog import get_catalog
from kdengine.io.atomic import atomic_write_text
from kdengine.io.weights import save_weights
from kdengine.tools.card import model_card
from kdengine.tools.measure import (Latency, count_flops, evaluation_split, measure_ms, onnx_session, require_export_extra,
                                    torch_latency)
from kdengine.train.models import describe
from kdengine.plugins.components import DataInfo
from kdengine.errors import CheckpointError, KDEngineError, located
from kdengine.recipe import ComponentSpec, Recipe, load_recipe
from kdengine.io.rundir import RunFolder
from kdengine.recipe.stages import StagePlan, plan_stages

FORMATS = ("onnx", "safetensors", "torchscript")
FILE_NAMES = {"onnx": "student.onnx", "safetensors": "student.safetensors", "torchscript": "student.pt"}
#: (absolute, relative) tolerance of the check of the exported model against PyTorch.
TOLERANCES = {"onnx": (1e-4, 1e-3), "torchscript": (1e-5, 1e-5), "safetensors": (0.0, 0.0)}


@dataclass
class ModelFacts:
    role: str
    description: str
    params: int
    flops_per_image: int
    latency: Latency | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ExportReport:
    format: str
    path: Path
    card: Path
    max_abs_diff: float
    tolerance: tuple[float, float]
    checked_shapes: list[tuple[int, ...]]
    file_bytes: int
    student: ModelFacts
    teacher: ModelFacts | None
    exported_latency_ms: float | None
    task: str
    monitor: str | None
    stage: str = "distilled"
    #: An image-to-image model: exported with a dynamic height and width (ONNX), checked at two sizes.
    dense: bool = False
    #: The int8 model beside the fp32 ONNX one (``kdengine.quantize.Int8Report``), if asked for.
    int8: object | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["path"], data["card"] = str(self.path), str(self.card)
        return json.dumps(data, indent=2)


# ---------------------------------------------------------------------------------------------
# rebuilding the run's models


def _sample_inputs(recipe: Recipe, provider, input_shape: tuple[int, ...] | None, count: int = 4) -> torch.Tensor:
    if input_shape is not None:
        return torch.randn(count, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        provider.check()
        data = evaluation_split(provider)
        items = [data[i][0] for i in range(min(count, len(data)))]
        items = [x for x in items if x.shape == items[0].shape]  # evaluation images may differ in size
    except KDEngineError as exc:
        raise KDEngineError(
            f"{recipe.source}: cannot read sample inputs from the dataset ({exc}); give the input shape "
            "instead, e.g. --input-shape 3,32,32"
        ) from None
    if not items:
        raise KDEngineError(f"{recipe.source}: the evaluation split is empty; give --input-shape")
    return torch.stack(items)


def stage_weights(run_dir: Path, recipe: Recipe) -> dict[str, tuple[StagePlan, Path]]:
    """Every planned stage whose best weights exist, with its plan and weights file."""
    found = {}
    for plan in plan_stages(recipe):
        path = run_dir / RunFolder.checkpoint_path(plan.name, "best")
        if plan.name == "teacher":
            path = _teacher_weights(run_dir, recipe)
        if path is not None and path.is_file():
            found[plan.name] = (plan, path)
    return found


def _teacher_weights(run_dir: Path, recipe: Recipe) -> Path | None:
    trained = run_dir / "checkpoints" / "teacher" / "best.safetensors"
    if trained.is_file():
        return trained
    if recipe.teacher.checkpoint is not None and Path(recipe.teacher.checkpoint).is_file():
        return Path(recipe.teacher.checkpoint)
    return None


def is_dense(model: nn.Module, sample: torch.Tensor) -> bool:
    """Whether the model maps an image to an image (super-resolution, edge maps, ...): such models
    are exported with a dynamic height and width, and checked at two sizes."""
    with torch.inference_mode():
        out = model(sample[:1])
    return sample.dim() == 4 and isinstance(out, torch.Tensor) and out.dim() == 4


def _export_onnx(model: nn.Module, sample: torch.Tensor, path: Path, dense: bool):
    # The output's spatial axes get their own names: a super-resolution output is scale x the input.
    axes = {"input": {0: "batch"}, "output": {0: "batch"}}
    if dense:
        axes = {"input": {0: "batch", 2: "height", 3: "width"},
                "output": {0: "batch", 2: "output_height", 3: "output_width"}}
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs no extra packages (the dynamo one needs onnxscript).
        warnings.simplefilter("ignore", DeprecationWarning)
        # Size-dependent Python branches (padding to a stride) warn while tracing; the check at a
        # second input size below catches a branch that the trace got wrong.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (sample,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes=axes, dynamo=False)
    session = onnx_session(path)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"input": inputs.numpy()})[0])

    return run


def _export_torchscript(model: nn.Module, sample: torch.Tensor, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the portable C++ format
        traced = torch.jit.trace(model, sample)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return loaded(inputs)

    return run


def _export_safetensors(model: nn.Module, path: Path, role: str, spec: ComponentSpec, info: DataInfo):
    metadata = {role: json.dumps({"name": spec.name, "params": spec.params}),
                "data_info": json.dumps(asdict(info))}
    save_weights(model, path, metadata=metadata)
    factory = get_catalog().get(role, spec.name)(spec.params)
    reloaded = factory.load(path, info).eval()

    def run(inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return reloaded(inputs)

    return run


def _max_abs_diff(run, model: nn.Module, inputs: list[torch.Tensor], tolerance: tuple[float, float]) -> float:
    atol, rtol = tolerance
    worst = 0.0
    for batch in inputs:
        with torch.inference_mode():
            expected = model(batch)
        got = run(batch).to(expected.dtype)
        if got.shape != expected.shape:
            raise KDEngineError(f"exported model returned shape {tuple(got.shape)} for a batch where PyTorch "
                                f"returns {tuple(expected.shape)}")
        diff = (got - expected).abs()
        worst = max(worst, float(diff.max()))
        if not bool((diff <= atol + rtol * expected.abs()).all()):
            raise KDEngineError(f"exported model differs from PyTorch: max |diff| {worst:.3g} exceeds "
                                f"{atol:g} + {rtol:g} * |output|")
    return worst


# ---------------------------------------------------------------------------------------------
# the command


def export_run(run_dir: str | Path, fmt: str, output_dir: str | Path | None = None,
               input_shape: tuple[int, ...] | None = None, throughput_batch: int = 32,
               latency_runs: int = 10, stage: str = "distilled", quantize: str | None = None,
               calibration_images: int = 256, max_drop: float | dict[str | None, float] | None = None,
               per_channel: bool = True) -> ExportReport:
    """Export one stage's model of ``run_dir`` (default: the distilled student), check it, and
    write its model card. ``quantize="int8"`` (ONNX only) adds a static int8 model calibrated on
    ``calibration_images`` training images and scored beside the fp32 one; a metric that drops by
    more than ``max_drop`` (a number: the monitored metric; or ``{metric: drop}``) raises a warning."""
    if fmt not in FORMATS:
        raise KDEngineError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_export_extra("--quantize int8" if quantize is not None else "--format onnx")
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise KDEngineError(f"{run_dir}: not a run folder (no recipe.json)")
    recipe = load_recipe(recipe_file)
    stages = stage_weights(run_dir, recipe)
    if stage not in stages:
        raise CheckpointError(f"{run_dir}: no stage '{stage}' with weights in this run folder; it has: "
                              f"{', '.join(stages) or 'none'}")
    plan, weights = stages[stage]
    int8_options = None
    if quantize is None and max_drop is not None:
        raise KDEngineError("--max-drop compares the int8 model with the fp32 one: give --quantize int8")
    if quantize is not None:
        from kdengine.tools.quantize import Int8Options

        int8_options = Int8Options.check(recipe, plan, fmt, quantize, calibration_images, max_drop, per_channel)
    catalog = get_catalog()
    with located(recipe.source, "data"):
        provider = catalog.get("dataset", recipe.data.name)(recipe.data.params)
        provider.on_bad_sample = recipe.data.on_bad_sample
        info = provider.info()
        sample = _sample_inputs(recipe, provider, input_shape)
    factory = catalog.get(plan.role, plan.spec.name)(plan.spec.params)
    with located(str(weights), plan.where):
        model = factory.load(weights, info).eval()

    out = Path(output_dir) if output_dir is not None else run_dir / "export" / fmt
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE_NAMES[fmt]
    dense = is_dense(model, sample)
    if fmt == "onnx":
        run = _export_onnx(model, sample, path, dense)
    elif fmt == "torchscript":
        run = _export_torchscript(model, sample, path)
    else:
        run = _export_safetensors(model, path, plan.role, plan.spec, info)
    checked = [sample, _other_inputs(sample, dense)]
    diff = _max_abs_diff(run, model, checked, TOLERANCES[fmt])

    results = _results(run_dir)
    monitor = results.monitor if results else None
    model_facts = ModelFacts(
        plan.role, describe(plan.spec), sum(p.numel() for p in model.parameters()),
        count_flops(model, sample[:1]), torch_latency(model, sample, throughput_batch, latency_runs),
        _stage_metrics(results, stage),
    )
    teacher_facts = None
    teacher_path = _teacher_weights(run_dir, recipe)
    if teacher_path is not None:
        teacher_factory = catalog.get("teacher", recipe.teacher.name)(recipe.teacher.params)
        with located(str(teacher_path), "teacher"):
            teacher = teacher_factory.load(teacher_path, info).eval()
        teacher_facts = ModelFacts(
            "teacher", describe(recipe.teacher), sum(p.numel() for p in teacher.parameters()),
            count_flops(teacher, sample[:1]), torch_latency(teacher, sample, throughput_batch, latency_runs),
            _stage_metrics(results, "teacher"),
        )
    exported_ms = None
    if fmt != "safetensors":
        exported_ms = measure_ms(lambda: run(sample[:1]), latency_runs)
    int8 = None
    if int8_options is not None:
        from kdengine.tools.quantize import quantize_and_score

        int8 = quantize_and_score(path, recipe, provider, info, checked, dense, int8_options, throughput_batch,
                                  latency_runs)

    report = ExportReport(
        format=fmt, path=path, card=out / "MODEL_CARD.md", max_abs_diff=diff, tolerance=TOLERANCES[fmt],
        checked_shapes=[tuple(b.shape) for b in checked], file_bytes=path.stat().st_size,
        student=model_facts, teacher=teacher_facts, exported_latency_ms=exported_ms, task=info.task,
        monitor=monitor, stage=stage, dense=dense, int8=int8,
    )
    baseline = "scratch" if stage == "distilled" else f"{stage}-scratch"
    atomic_write_text(report.card, model_card(report, recipe, _stage_metrics(results, baseline)))
    atomic_write_text(out / "export.json", report.to_json())
    return report


def _other_inputs(sample: torch.Tensor, dense: bool) -> torch.Tensor:
    """Random inputs at another batch size (and, for dense models, another height and width)."""
    shape = [sample.shape[0] + 3, *sample.shape[1:]]
    if dense:
        shape[-2] += 16
        shape[-1] += 32
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _results(run_dir: Path):
    from kdengine.io.results import Results

    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        return Results.load(path)
    except Exception as exc:  # an unreadable results file costs the card its metrics, not the export
        warnings.warn(f"{path}: cannot read the results ({type(exc).__name__}: {exc}); the card has no metrics")
        return None


def _stage_metrics(results, stage: str) -> dict[str, float]:
    if results is None:
        return {}
    found = results.stage(stage)
    return dict(found.test_best) if found is not None else {}  # test, with the best weights
