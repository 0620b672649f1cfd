"""How the frozen teacher runs: its precision and memory format, chosen per model.

bf16 and channels_last speed some models up on a CPU with AVX-512 BF16 and slow others down
(depthwise convolutions, for one); the fastest setting for inference need not be the student's.
``[teacher] precision`` and ``channels_last`` fix it, and ``precision = "auto"`` measures the
candidates on a slice of the first real batch and keeps the fastest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from accelerate.utils import broadcast_object_list
from torch import nn

from kdengine.plugins.features import FeatureTaps
from kdengine.reporting.progress import console
from kdengine.runtime.compiling import compiled_call

if TYPE_CHECKING:
    from kdengine.recipe import TrainSpec
    from kdengine.train.context import RunContext


@dataclass(frozen=True)
class InferenceSetting:
    #: "no" (float32), "bf16" or "fp16".
    precision: str
    channels_last: bool

    def __str__(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{'fp32' if self.precision == 'no' else self.precision}, {layout}"


def _dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


class TeacherRunner:
    """The frozen teacher with its taps, run under inference_mode in its own precision and
    memory format; returns its output and tapped features as tensors the student's backward pass
    can keep (clones of the inference tensors)."""

    def __init__(self, model: nn.Module, taps: FeatureTaps | None, setting: InferenceSetting):
        self.model = model
        self.taps = taps
        self.setting = setting
        self._forward = model
        self._layout()

    def _layout(self) -> None:
        fmt = torch.channels_last if self.setting.channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)

    def use(self, setting: InferenceSetting) -> None:
        self.setting = setting
        self._layout()

    def compile(self, source: str) -> None:
        """Run the teacher compiled from now on (``train.compile``); the model itself is left as it is."""
        self._forward = compiled_call(self.model, source, "the teacher")

    def __call__(self, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            fmt = torch.channels_last if self.setting.channels_last else torch.contiguous_format
            inputs = inputs.contiguous(memory_format=fmt)
        dtype = _dtype(self.setting.precision)
        device_type = inputs.device.type if isinstance(inputs, torch.Tensor) else "cpu"
        # Nested inside the stage's autocast, this one decides the teacher's precision alone.
        with torch.inference_mode(), torch.autocast(device_type, dtype=dtype or torch.bfloat16,
                                                    enabled=dtype is not None):
            output = self._forward(inputs)
            features = self.taps.collect() if self.taps else {}
        return output.clone(), {k: v.clone() for k, v in features.items()}

    def close(self) -> None:
        if self.taps is not None:
            self.taps.close()


def candidates(requested: str, channels_last: bool | None, stage_precision: str, stage_channels_last: bool,
               device: torch.device) -> list[InferenceSetting]:
    """The settings to try for ``requested`` precision ("same", "no", "bf16", "fp16", "auto")."""
    if requested == "auto":
        precisions = ["no", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    else:
        precisions = [stage_precision if requested == "same" else requested]
    if channels_last is not None:
        layouts = [channels_last]
    elif requested == "auto":
        layouts = [False, True]
    else:
        layouts = [stage_channels_last]
    return [InferenceSetting(p, c) for p in precisions for c in layouts]


def choose(runner: TeacherRunner, options: list[InferenceSetting], inputs: torch.Tensor,
           rows: int = 32, repeats: int = 2) -> dict[InferenceSetting, float]:
    """Time each option on the first ``rows`` of a batch (after a warm-up), leave the runner on
    the fastest, and return the seconds per batch slice of each."""
    if len(options) == 1:
        runner.use(options[0])
        return {}
    sample = inputs[:rows]
    timings: dict[InferenceSetting, float] = {}
    for option in options:
        runner.use(option)
        runner(sample)  # warm-up: kernels chosen, weights repacked
        if sample.is_cuda:
            torch.cuda.synchronize(sample.device)
        start = time.perf_counter()
        for _ in range(repeats):
            runner(sample)
        if sample.is_cuda:
            torch.cuda.synchronize(sample.device)
        timings[option] = (time.perf_counter() - start) / repeats
    runner.use(min(timings, key=timings.get))
    return timings


def stage_candidates(ctx: "RunContext", train: "TrainSpec") -> list[InferenceSetting]:
    """The settings ``[teacher] precision / channels_last`` allow for a stage trained under ``train``."""
    spec = ctx.recipe.teacher
    return candidates(spec.precision, spec.channels_last, train.mixed_precision, train.channels_last, ctx.device)


def fixed_setting(ctx: "RunContext", train: "TrainSpec") -> InferenceSetting | None:
    """The setting ``[teacher] precision / channels_last`` names, or None when it is measured ("auto")."""
    options = stage_candidates(ctx, train)
    return options[0] if len(options) == 1 else None


def agree(accelerator, setting: InferenceSetting | None) -> InferenceSetting | None:
    """The main process's setting on every process: timings differ from process to process, and
    the teacher-output cache is keyed by the setting."""
    if accelerator.num_processes == 1:
        return setting
    box = [setting]
    broadcast_object_list(box, from_process=0)
    return box[0]


def teacher_runner(ctx: "RunContext", train: "TrainSpec", model: nn.Module, feature_paths: list[str],
                   sample: torch.Tensor, setting: InferenceSetting | None = None) -> TeacherRunner:
    """The teacher ready to teach: its taps, and the precision and memory format of
    ``[teacher] precision / channels_last`` (measured on ``sample`` when ``precision = "auto"``),
    or ``setting`` when one was already chosen (a resumed stage keeps its teacher's)."""
    spec = ctx.recipe.teacher
    taps = FeatureTaps(model, feature_paths, role="teacher") if feature_paths else None
    options = [setting] if setting is not None else candidates(spec.precision, spec.channels_last,
                                                               train.mixed_precision, train.channels_last, ctx.device)
    runner = TeacherRunner(model, taps, options[0])
    timings = choose(runner, options, sample)
    if timings and ctx.progress and ctx.accelerator.is_main_process:
        measured = ", ".join(f"{option}: {seconds * 1e3:.0f} ms" for option, seconds in timings.items())
        console.print(f"teacher inference: {runner.setting} (fastest of {measured})")
    if train.compile:  # after the choice: the candidates are timed as they run uncompiled
        runner.compile(ctx.recipe.source)
    return runner
