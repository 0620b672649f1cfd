"""``kdengine export``: the distilled student of a run, as a deployable file with a model card.

The student is rebuilt from ``RUN_DIR/recipe.json`` and loaded from
``RUN_DIR/checkpoints/distilled/best.safetensors``. That checkpoint holds the student alone: the
adapters and heads that feature losses train beside it live in the loss terms and are never
saved there, so they are dropped by construction. The exported file is then checked against the
PyTorch model on sample inputs (real evaluation images when the dataset is present, plus random
inputs at another batch size):

=============  ==========================================  ===========================
format         checked with                                tolerance (|a - b| <= ...)
=============  ==========================================  ===========================
onnx           onnxruntime (CPUExecutionProvider)          1e-4 + 1e-3 * |b|
torchscript    ``torch.jit.load``                          1e-5 + 1e-5 * |b|
safetensors    rebuilt from the recipe and reloaded        exact
=============  ==========================================  ===========================

A model card (``MODEL_CARD.md``) and the same numbers as ``export.json`` are written beside the file.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdengine.plugins.catalog import get_catalog
from kdengine.io.atomic import atomic_write_text
from kdengine.io.weights import save_weights
from kdengine.plugins.components import DataInfo
from kdengine.errors import CheckpointError, KDEngineError, located
from kdengine.recipe import Recipe, load_recipe

FORMATS = ("onnx", "safetensors", "torchscript")
FILE_NAMES = {"onnx": "student.onnx", "safetensors": "student.safetensors", "torchscript": "student.pt"}
#: (absolute, relative) tolerance of the check of the exported model against PyTorch.
TOLERANCES = {"onnx": (1e-4, 1e-3), "torchscript": (1e-5, 1e-5), "safetensors": (0.0, 0.0)}


@dataclass
class Latency:
    batch_1_ms: float
    throughput_batch: int
    throughput_ms: float

    @property
    def images_per_second(self) -> float:
        return self.throughput_batch / (self.throughput_ms / 1000)


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
        data = provider.test_set()
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


def _teacher_weights(run_dir: Path, recipe: Recipe) -> Path | None:
    trained = run_dir / "checkpoints" / "teacher" / "best.safetensors"
    if trained.is_file():
        return trained
    if recipe.teacher.checkpoint is not None and Path(recipe.teacher.checkpoint).is_file():
        return Path(recipe.teacher.checkpoint)
    return None


def count_flops(model: nn.Module, sample: torch.Tensor) -> int:
    """Forward FLOPs for ``sample`` (torch.utils.flop_counter; multiply-adds count as 2)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(sample)
    return counter.get_total_flops()


def measure_ms(call, runs: int, warmup: int = 1) -> float:
    """Median wall time of ``call()`` in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def torch_latency(model: nn.Module, sample: torch.Tensor, throughput_batch: int, runs: int) -> Latency:
    one = sample[:1]
    repeats = -(-throughput_batch // sample.shape[0])
    batch = sample.repeat(repeats, *([1] * (sample.dim() - 1)))[:throughput_batch]
    with torch.inference_mode():
        single = measure_ms(lambda: model(one), runs)
        many = measure_ms(lambda: model(batch), max(1, runs // 3))
    return Latency(single, throughput_batch, many)


# ---------------------------------------------------------------------------------------------
# the formats


def _export_onnx(model: nn.Module, sample: torch.Tensor, path: Path):
    try:
        import onnxruntime
    except ImportError:
        raise KDEngineError("--format onnx needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs no extra packages (the dynamo one needs onnxscript).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (sample,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

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


def _export_safetensors(model: nn.Module, path: Path, recipe: Recipe, info: DataInfo):
    spec = recipe.student
    metadata = {"student": json.dumps({"name": spec.name, "params": spec.params}),
                "data_info": json.dumps(asdict(info))}
    save_weights(model, path, metadata=metadata)
    factory = get_catalog().get("student", spec.name)(spec.params)
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
               latency_runs: int = 10) -> ExportReport:
    """Export the distilled student of ``run_dir``, check it, and write its model card."""
    if fmt not in FORMATS:
        raise KDEngineError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise KDEngineError(f"{run_dir}: not a run folder (no recipe.json)")
    weights = run_dir / "checkpoints" / "distilled" / "best.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no distilled student in this run folder")
    recipe = load_recipe(recipe_file)
    catalog = get_catalog()
    with located(recipe.source, "data"):
        provider = catalog.get("dataset", recipe.data.name)(recipe.data.params)
        provider.on_bad_sample = recipe.data.on_bad_sample
        info = provider.info()
        sample = _sample_inputs(recipe, provider, input_shape)
    student_factory = catalog.get("student", recipe.student.name)(recipe.student.params)
    with located(str(weights), "student"):
        student = student_factory.load(weights, info).eval()

    out = Path(output_dir) if output_dir is not None else run_dir / "export" / fmt
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE_NAMES[fmt]
    if fmt == "onnx":
        run = _export_onnx(student, sample, path)
    elif fmt == "torchscript":
        run = _export_torchscript(student, sample, path)
    else:
        run = _export_safetensors(student, path, recipe, info)
    other_batch = torch.randn(sample.shape[0] + 3, *sample.shape[1:], generator=torch.Generator().manual_seed(1))
    checked = [sample, other_batch]
    diff = _max_abs_diff(run, student, checked, TOLERANCES[fmt])

    results = _results(run_dir)
    monitor = results.monitor if results else None
    student_facts = ModelFacts(
        "student", _describe(recipe.student), sum(p.numel() for p in student.parameters()),
        count_flops(student, sample[:1]), torch_latency(student, sample, throughput_batch, latency_runs),
        _stage_metrics(results, "distilled"),
    )
    teacher_facts = None
    teacher_path = _teacher_weights(run_dir, recipe)
    if teacher_path is not None:
        teacher_factory = catalog.get("teacher", recipe.teacher.name)(recipe.teacher.params)
        with located(str(teacher_path), "teacher"):
            teacher = teacher_factory.load(teacher_path, info).eval()
        teacher_facts = ModelFacts(
            "teacher", _describe(recipe.teacher), sum(p.numel() for p in teacher.parameters()),
            count_flops(teacher, sample[:1]), torch_latency(teacher, sample, throughput_batch, latency_runs),
            _stage_metrics(results, "teacher"),
        )
    exported_ms = None
    if fmt != "safetensors":
        exported_ms = measure_ms(lambda: run(sample[:1]), latency_runs)

    report = ExportReport(
        format=fmt, path=path, card=out / "MODEL_CARD.md", max_abs_diff=diff, tolerance=TOLERANCES[fmt],
        checked_shapes=[tuple(b.shape) for b in checked], file_bytes=path.stat().st_size,
        student=student_facts, teacher=teacher_facts, exported_latency_ms=exported_ms, task=info.task,
        monitor=monitor,
    )
    scratch = _stage_metrics(results, "scratch")
    atomic_write_text(report.card, model_card(report, recipe, scratch))
    atomic_write_text(out / "export.json", report.to_json())
    return report


def _describe(spec) -> str:
    from kdengine.train.run import describe

    return describe(spec)


def _results(run_dir: Path):
    from kdengine.reporting.results import Results

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
    return dict(found.best) if found is not None else {}


# ---------------------------------------------------------------------------------------------
# the model card


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def model_card(report: ExportReport, recipe: Recipe, scratch: dict[str, float]) -> str:
    s, t = report.student, report.teacher
    atol, rtol = report.tolerance
    lines = [
        f"# {recipe.run.name}: distilled student ({report.format})",
        "",
        f"- **Task:** {report.task}",
        f"- **Dataset:** {recipe.data.name}",
        f"- **Student:** {s.description}",
        f"- **Teacher:** {t.description if t else _describe(recipe.teacher) + ' (weights not found)'}",
        "- **Loss:** " + " + ".join(f"{l.weight if l.weight == 'auto' else format(l.weight, 'g')} x {l.name}"
                                   for l in recipe.loss),
        f"- **File:** `{report.path.name}`, {_size(report.file_bytes)}",
        f"- **Input:** {tuple(report.checked_shapes[0][1:])} per image (batch dimension dynamic)"
        if report.format == "onnx" else f"- **Input:** {tuple(report.checked_shapes[0][1:])} per image",
        "",
        "## Quality",
        "",
    ]
    metrics = list(dict.fromkeys([*(t.metrics if t else {}), *s.metrics, *scratch]))
    if metrics:
        lines += ["| metric (best epoch) | teacher | student from scratch | distilled student |",
                  "|---|---|---|---|"]
        for name in metrics:
            def cell(values):
                return f"{values[name]:.4f}" if name in values else "n/a"
            mark = " (monitored)" if name == report.monitor else ""
            lines.append(f"| {name}{mark} | {cell(t.metrics if t else {})} | {cell(scratch)} | {cell(s.metrics)} |")
    else:
        lines.append("No results.json in the run folder: no metrics.")
    lines += ["", "## Cost", "",
              "| | teacher | student |", "|---|---|---|",
              f"| parameters | {t.params:,} | {s.params:,} |" if t else f"| parameters | n/a | {s.params:,} |",
              (f"| forward FLOPs per image | {t.flops_per_image:,} | {s.flops_per_image:,} |" if t
               else f"| forward FLOPs per image | n/a | {s.flops_per_image:,} |")]
    if s.latency:
        def lat(m, attr):
            return "n/a" if m is None or m.latency is None else attr(m.latency)
        lines += [
            f"| CPU latency, batch 1 (PyTorch, median) | {lat(t, lambda l: f'{l.batch_1_ms:.2f} ms')} | {s.latency.batch_1_ms:.2f} ms |",
            f"| CPU throughput, batch {s.latency.throughput_batch} (PyTorch) | "
            f"{lat(t, lambda l: f'{l.images_per_second:.0f} images/s')} | {s.latency.images_per_second:.0f} images/s |",
        ]
    if report.exported_latency_ms is not None:
        runtime = "onnxruntime" if report.format == "onnx" else "TorchScript"
        lines.append(f"| CPU latency, batch 1 ({runtime}, median) | | {report.exported_latency_ms:.2f} ms |")
    lines += [
        "",
        f"Measured on {platform.processor() or platform.machine()} with {torch.get_num_threads()} PyTorch "
        f"threads, torch {torch.__version__}; FLOPs by torch.utils.flop_counter (a multiply-add is 2 FLOPs).",
        "",
        "## Export check",
        "",
        f"The exported model was compared with the PyTorch student on batches of shapes "
        f"{', '.join(str(tuple(x)) for x in report.checked_shapes)}: max |difference| = "
        f"{report.max_abs_diff:.3g}, within the tolerance |a - b| <= {atol:g} + {rtol:g} * |b|.",
        "Adapters and projection heads trained by feature losses are not part of the student and are "
        "not exported.",
        "",
    ]
    return "\n".join(lines)
