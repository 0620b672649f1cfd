"""What ``kdengine validate`` reports: each model's size, FLOPs and time, the loss values, the
memory estimate, the teacher-output caches it predicts, and the text it prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdengine.tools.layers import Layer, format_layers
from kdengine.plugins.coupling import coupling_note


@dataclass
class ModelReport:
    role: str
    model: str
    params: int
    forward_flops: int
    #: Wall time of that forward pass (a teacher's under inference_mode, a student's as it trains).
    seconds: float


@dataclass
class CacheEstimate:
    """What one teacher-output cache will hold on disk once built."""

    stages: list[str]
    bytes: int
    epochs: int
    rows: int
    dtype: str
    topk: int | None

    def line(self) -> str:
        stored = f"top-{self.topk} logits" if self.topk else "outputs"
        return (f"teacher cache ({', '.join(self.stages)}): {self.bytes / 2**20:.1f} MiB on disk once built "
                f"({self.epochs} epochs x {self.rows} rows, {stored} in {self.dtype}, one process)")


@dataclass
class DryRunReport:
    recipe: str
    batch_shape: tuple[int, ...]
    #: Rows of the batch the models and losses ran on (FLOPs, times and memory scaled from them).
    checked_rows: int = 0
    models: list[ModelReport] = field(default_factory=list)
    loss_values: dict[str, float] = field(default_factory=dict)
    #: How the ``weight = "auto"`` terms were weighted for the batch's loss values, per pair.
    loss_weights: list[str] = field(default_factory=list)
    #: Estimated from the models and the batch (the dry run runs on the CPU, a few rows of it).
    peak_memory_bytes: int = 0
    #: Seconds per teacher forward on ``timing_rows`` images for each candidate setting
    #: (``teacher.precision = "auto"``).
    teacher_inference: dict[str, float] = field(default_factory=dict)
    timing_rows: int = 0
    #: With ``teacher.cache = true``: each cache the run will build, and its size.
    caches: list[CacheEstimate] = field(default_factory=list)
    #: Bad samples of the train split left out (``data.on_bad_sample = "skip"``).
    skipped: list[str] = field(default_factory=list)
    #: With ``layers=True``: each distinct model's tappable layers on the batch, by ``role model``.
    layers: dict[str, list[Layer]] = field(default_factory=dict)
    #: Under ``train.max_memory``: by stage, what would see micro-batches instead of the whole batch.
    micro_batch_coupled: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.recipe}: OK", f"  batch: {tuple(self.batch_shape)}"]
        if self.checked_rows and self.checked_rows < self.batch_shape[0]:
            out.append(f"  models and losses run on {self.checked_rows} of its {self.batch_shape[0]} rows; "
                       "FLOPs, times and memory scaled to the batch")
        if self.skipped:
            out.append(f"  skipped {len(self.skipped)} bad train sample(s), e.g. {self.skipped[0]}")
        for m in self.models:
            out.append(f"  {m.role:<8} {m.model}: {m.params / 1e6:.3f}M params, "
                       f"{m.forward_flops / 1e9:.3f} GFLOPs per batch forward, {m.seconds * 1e3:.0f} ms")
        for name, value in self.loss_values.items():
            out.append(f"  loss {name}: {value:.4f}")
        out += [f"  {line}" for line in self.loss_weights]
        if self.teacher_inference:
            fastest = min(self.teacher_inference, key=self.teacher_inference.get)
            out.append(f"  teacher inference, timed on {self.timing_rows} images (a run times them again "
                       "on up to 32 of its first batch):")
            for setting, seconds in self.teacher_inference.items():
                mark = "  <- fastest, used" if setting == fastest else ""
                out.append(f"    {setting}: {seconds * 1e3:.1f} ms{mark}")
        out.append("  training memory estimate (weights, grads, optimizer state, saved activations): "
                   f"{self.peak_memory_bytes / 2**20:.1f} MiB")
        out += [f"  {cache.line()}" for cache in self.caches]
        for stage, coupled in self.micro_batch_coupled.items():
            out.append(f"  train.max_memory: {stage}: if its batch is split into micro-batches, "
                       f"{coupling_note(coupled)}")
        for label, layers in self.layers.items():
            out.append(f"  {label}: {len(layers)} tappable layers (module paths for feature losses)")
            out += format_layers(layers, indent="    ")
        return out


@dataclass
class MemoryEstimate:
    """What a training step holds: weights, gradients and optimizer state (fixed) and the saved
    activations of the checked rows (linear in the rows)."""

    fixed: int
    activations: int

    def total(self, scale: float = 1.0) -> int:
        return self.fixed + round(self.activations * scale)
