"""``kdengine export --format onnx --quantize int8``: a static int8 copy of the exported ONNX model,
scored beside the fp32 one.

onnxruntime's own tools do the work, in the order its documentation gives:

1. ``quant_pre_process``: symbolic shape inference and graph optimisation (BatchNorm folded into
   the convolutions before their weights are quantised).
2. ``quantize_static`` in the QDQ format, with MinMax ranges calibrated on a few hundred images of
   the recipe's train split. Weights are int8 with one scale per output channel (``per_channel``):
   the depthwise convolutions of MobileNet-style students have channels whose ranges differ by
   orders of magnitude, and one scale per tensor rounds the small ones to zero. Activations are
   uint8 on x86 and int8 on ARM, as onnxruntime recommends for CPUs.
3. Both ONNX models are run in onnxruntime on the same check batches as the fp32 export (two
   input sizes for dense models), scored with the recipe's metrics on the evaluation split through
   the dataset's ``predict`` (the engine's evaluation loop, tiled super-resolution included), and
   timed at batch 1 and at the throughput batch with the measurement the card uses for PyTorch.

Calibration images are the train split's items as the dataset returns them (a provider's random
crops and flips included: they leave the value ranges alone), without the batch augmentation
(CutMix, Mixup) that training applies on top; the recipe's seed picks and loads them.

A metric that drops by more than ``max_drop`` (in the metric's own unit: a fraction for top-1
accuracy, dB for PSNR, F-measure for ODS; "drop" follows the metric's ``higher_is_better``)
raises an :class:`Int8DropWarning` naming the drop.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from kdengine.errors import KDEngineError, located
from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.components import DataInfo, DatasetProvider
from kdengine.tools.measure import (EVALUATION_SPLIT, Latency, evaluation_split, onnx_session, require_export_extra,
                                    torch_latency)
from kdengine.recipe import Recipe, monitored_metric
from kdengine.recipe.stages import StagePlan
from kdengine.train.accelerator import make_accelerator
from kdengine.train.context import eval_loader
from kdengine.train.evaluate import Scorer, build_metrics

MODES = ("int8",)
#: Images per calibration batch (the calibrator keeps only each batch's per-tensor min and max).
CALIBRATION_BATCH = 16


class Int8DropWarning(UserWarning):
    """The int8 model scores worse than the fp32 one by more than the allowed drop."""


@dataclass(frozen=True)
class Int8Options:
    calibration_images: int
    per_channel: bool
    #: metric value -> the largest acceptable drop, in the metric's own unit
    max_drop: dict[str, float]
    seed: int

    @classmethod
    def check(cls, recipe: Recipe, plan: StagePlan, fmt: str, mode: str, calibration_images: int,
              max_drop: float | Mapping[str | None, float] | None, per_channel: bool) -> "Int8Options":
        """The options, checked before any model is built. ``max_drop`` is a number for the stage's
        monitored metric, or ``{metric: number}`` where the key None stands for the monitored one."""
        if mode not in MODES:
            raise KDEngineError(f"--quantize: unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        if fmt != "onnx":
            raise KDEngineError(f"--quantize {mode} needs --format onnx (onnxruntime's static quantisation)")
        if calibration_images < 1:
            raise KDEngineError(f"--calibration-images: must be at least 1, got {calibration_images}")
        if max_drop is None:
            max_drop = {}
        elif not isinstance(max_drop, Mapping):
            max_drop = {None: max_drop}
        # The names are checked against the values the fp32 model's metrics return: a metric that
        # returns a dict need not declare its keys in advance.
        monitored = monitored_metric(recipe, plan.train)[0]
        limits = {monitored if name is None else name: float(value) for name, value in max_drop.items()}
        require_export_extra(f"--quantize {mode}")
        return cls(calibration_images, per_channel, limits, recipe.run.seed)


@dataclass
class OnnxFacts:
    """One ONNX model of the comparison."""

    file: str
    file_bytes: int
    metrics: dict[str, float]
    latency: Latency


@dataclass
class Int8Report:
    fp32: OnnxFacts
    int8: OnnxFacts
    #: The split the metrics were computed on.
    split: str
    calibration_images: int
    #: How the model was quantised, in words (format, weights, activations, calibration).
    settings: dict[str, str]
    #: Largest |int8 - fp32| output on the sample images (:func:`compared_inputs`), and the
    #: largest |fp32| output there.
    max_abs_diff: float
    max_abs_output: float
    compared_shapes: list[tuple[int, ...]]
    #: metric -> drop from fp32 to int8, positive when int8 is worse (by the metric's higher_is_better).
    drops: dict[str, float] = field(default_factory=dict)
    #: metric -> the allowed drop, for the metrics given one.
    max_drop: dict[str, float] = field(default_factory=dict)

    def exceeded(self) -> dict[str, float]:
        """The metrics whose drop is above their limit, with the drop."""
        return {name: self.drops[name] for name, limit in self.max_drop.items()
                if name in self.drops and self.drops[name] > limit}


class OnnxModel(nn.Module):
    """An onnxruntime session behind the ``nn.Module`` call the engine's evaluation and the
    datasets' ``predict`` expect: tensors in, tensors out."""

    def __init__(self, path: Path):
        super().__init__()
        self.session = onnx_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


# ---------------------------------------------------------------------------------------------
# calibration and quantisation


def calibration_batches(provider: DatasetProvider, count: int, seed: int) -> list[np.ndarray]:
    """``count`` train-split inputs (all of them, if fewer), picked and loaded under ``seed``,
    stacked into batches of same-size images."""
    data = provider.train_set()
    if len(data) == 0:
        raise KDEngineError("the train split is empty: no images to calibrate the int8 ranges on")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    pending: dict[tuple[int, ...], list[np.ndarray]] = {}
    batches = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index in order:
            image = data[index][0]
            if not isinstance(image, torch.Tensor):
                raise KDEngineError(f"train item {index} has a {type(image).__name__} input; int8 "
                                    "calibration needs image tensors")
            bucket = pending.setdefault(tuple(image.shape), [])
            bucket.append(image.float().numpy())
            if len(bucket) == CALIBRATION_BATCH:
                batches.append(np.stack(bucket))
                bucket.clear()
    batches += [np.stack(bucket) for bucket in pending.values() if bucket]
    return batches


def _reader(batches: list[np.ndarray], input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._next = iter(batches)

        def get_next(self):
            batch = next(self._next, None)
            return None if batch is None else {input_name: batch}

    return Batches()


def activation_type():
    """uint8 activations on x86 (the U8S8 kernels), int8 on ARM: onnxruntime's advice for CPUs."""
    from onnxruntime.quantization import QuantType

    arm = platform.machine().lower().startswith(("arm", "aarch"))
    return QuantType.QInt8 if arm else QuantType.QUInt8


def quantize_model(fp32: Path, int8: Path, batches: list[np.ndarray], per_channel: bool) -> dict[str, str]:
    """Write the static int8 QDQ model of ``fp32`` to ``int8``; returns the settings, in words."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, int8 = fp32.resolve(), int8.resolve()  # the pre-processing runs in another directory
    activations = activation_type()
    input_name = onnx_session(fp32).get_inputs()[0].name
    with tempfile.TemporaryDirectory(dir=int8.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference logs a warning for each size it cannot compare (the crop after
        # padding to a stride); the int8 model's output shapes are checked at two sizes instead.
        shape_log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
        level = shape_log.level
        shape_log.setLevel(logging.ERROR)
        try:
            # A failed symbolic inference dumps its partial model into the working directory: make
            # that the temporary one.
            with contextlib.chdir(tmp):
                # auto_merge: dense models add tensors whose symbolic sizes are equal but spelled
                # differently (2 x height from a pixel shuffle and from a bicubic resize).
                quant_pre_process(str(fp32), str(prepared), auto_merge=True)
        except Exception:  # onnxruntime raises a bare Exception when symbolic inference is incomplete
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        finally:
            shape_log.setLevel(level)
        quantize_static(str(prepared), str(int8), _reader(batches, input_name), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=activations, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return {
        "format": "QDQ (onnxruntime.quantization.quantize_static)",
        "weights": "int8, " + ("one scale per output channel" if per_channel else "one scale per tensor"),
        "activations": "uint8" if activations == QuantType.QUInt8 else "int8",
        "calibration": "MinMax",
    }


# ---------------------------------------------------------------------------------------------
# scoring


def score(model: nn.Module, recipe: Recipe, provider: DatasetProvider,
          info: DataInfo) -> tuple[dict[str, float], dict[str, bool]]:
    """The recipe's metrics for ``model`` on the evaluation split, with the engine's own scorer
    (the dataset's batches, its ``predict``), in fp32 on the CPU. Returns the values and, for
    each, whether higher is better (its metric component's ``higher_is_better``)."""
    with located(recipe.source, "metric"):
        metrics = build_metrics(recipe, info)
    scorer = Scorer(make_accelerator("no"), provider, metrics)
    values = scorer(model, eval_loader(provider, evaluation_split(provider), recipe.train), channels_last=False)
    catalog = get_catalog()
    higher = {}
    for spec, _ in metrics:
        for key in catalog.get("metric", spec.name).keys or (spec.name,):
            higher[key] = catalog.get("metric", spec.name).higher_is_better
    # Values a metric returns without declaring them (a dict under its own name) take its direction.
    fallback = {spec.name: catalog.get("metric", spec.name).higher_is_better for spec, _ in metrics}
    return values, {k: higher.get(k, next(iter(fallback.values()))) for k in values}


def metric_drops(fp32: dict[str, float], int8: dict[str, float], higher_is_better: dict[str, bool]) -> dict[str, float]:
    """How much worse int8 scores than fp32, per metric: positive is worse, whichever way the
    metric points."""
    drops = {}
    for name, before in fp32.items():
        if name in int8:
            drops[name] = before - int8[name] if higher_is_better.get(name, True) else int8[name] - before
    return drops


def compared_inputs(checked: list[torch.Tensor], dense: bool) -> list[torch.Tensor]:
    """The inputs int8 outputs are compared on: the sample images, and for dense models the same
    images resized to the second checked size. The random batches of the fp32 check lie far
    outside the calibrated ranges, where int8 saturates by design, so they check shapes only."""
    sample = checked[0]
    if not dense:
        return [sample]
    other = torch.nn.functional.interpolate(sample, size=tuple(checked[1].shape[-2:]), mode="bilinear",
                                            align_corners=False)
    return [sample, other]


def _compare_outputs(fp32: nn.Module, int8: nn.Module, checked: list[torch.Tensor],
                     compared: list[torch.Tensor]) -> tuple[float, float]:
    for batch in checked:
        expected, got = fp32(batch), int8(batch)
        if got.shape != expected.shape:
            raise KDEngineError(f"the int8 model returned shape {tuple(got.shape)} for a batch of shape "
                                f"{tuple(batch.shape)} where the fp32 one returns {tuple(expected.shape)}")
    worst, largest = 0.0, 0.0
    for batch in compared:
        expected, got = fp32(batch), int8(batch)
        worst = max(worst, float((got - expected).abs().max()))
        largest = max(largest, float(expected.abs().max()))
    return worst, largest


def quantize_and_score(fp32_path: Path, recipe: Recipe, provider: DatasetProvider, info: DataInfo,
                       checked: list[torch.Tensor], dense: bool, options: Int8Options, throughput_batch: int,
                       latency_runs: int) -> Int8Report:
    """Score the exported ``fp32_path``, quantise it beside itself (``<name>.int8.onnx``), check
    the int8 model on the ``checked`` batches, score it, time both, and warn about drops above the
    limits."""
    fp32 = OnnxModel(fp32_path)
    with located(recipe.source, "data"):
        fp32_metrics, higher_is_better = score(fp32, recipe, provider, info)
    unknown = [name for name in options.max_drop if name not in fp32_metrics]
    if unknown:
        raise KDEngineError(f"--max-drop: the recipe's metrics report no '{unknown[0]}'; they report "
                            f"{', '.join(fp32_metrics)}")
    with located(recipe.source, "data"):
        batches = calibration_batches(provider, options.calibration_images, options.seed)
    int8_path = fp32_path.with_name(f"{fp32_path.stem}.int8.onnx")
    settings = quantize_model(fp32_path, int8_path, batches, options.per_channel)
    int8 = OnnxModel(int8_path)
    compared = compared_inputs(checked, dense)
    with torch.inference_mode():
        diff, largest = _compare_outputs(fp32, int8, checked, compared)
    with located(recipe.source, "data"):
        int8_metrics, _ = score(int8, recipe, provider, info)
    facts = {}
    for name, model, path, metrics in (("fp32", fp32, fp32_path, fp32_metrics),
                                       ("int8", int8, int8_path, int8_metrics)):
        latency = torch_latency(model, checked[0], throughput_batch, latency_runs)
        facts[name] = OnnxFacts(path.name, path.stat().st_size, metrics, latency)
    drops = metric_drops(facts["fp32"].metrics, facts["int8"].metrics, higher_is_better)
    report = Int8Report(facts["fp32"], facts["int8"], EVALUATION_SPLIT, sum(len(b) for b in batches), settings,
                        diff, largest, [tuple(b.shape) for b in compared], drops, dict(options.max_drop))
    for name, drop in report.exceeded().items():
        warnings.warn(f"int8 {name} drops by {drop:.4g} from fp32 ({facts['fp32'].metrics[name]:.4f} -> "
                      f"{facts['int8'].metrics[name]:.4f}), more than --max-drop {report.max_drop[name]:g}",
                      Int8DropWarning, stacklevel=2)
    return report


# ---------------------------------------------------------------------------------------------
# the model card


def summary_lines(report: Int8Report) -> list[str]:
    """What ``kdengine export --quantize int8`` prints: the int8 file and fp32 -> int8 changes."""
    fp32, int8 = report.fp32, report.int8
    lines = [f"int8: {int8.file} ({int8.file_bytes / 2**20:.2f} MiB, fp32 {fp32.file_bytes / 2**20:.2f} MiB); "
             f"batch-1 latency {fp32.latency.batch_1_ms:.2f} -> {int8.latency.batch_1_ms:.2f} ms (onnxruntime)"]
    for name, before in fp32.metrics.items():
        if name in int8.metrics:
            over = " OVER --max-drop" if name in report.exceeded() else ""
            lines.append(f"  {name} ({report.split}): fp32 {before:.4f}, int8 {int8.metrics[name]:.4f}, "
                         f"drop {report.drops[name]:.4f}{over}")
    return lines
