"""What a compression sweep records: ``sweep.json``, rewritten after every point, so that a killed
sweep knows which points are finished (``kdengine sweep --resume``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from kdengine.io.atomic import atomic_write_text

#: The split every number of a sweep is scored on (with each stage's val-best weights).
SWEEP_SPLIT = "test"


class SweepAxis(BaseModel):
    key: str
    #: The values as written on the command line (each parsed like a ``--set`` value).
    values: list[str]


class SweepPoint(BaseModel):
    #: The point's folder name under ``points/``, e.g. ``01-width_mult-1.0``.
    label: str
    #: The point's ``--set`` style overrides, one per axis, and their parsed values.
    overrides: list[str]
    values: dict[str, Any] = Field(default_factory=dict)
    #: pending: not started; running: its run folder exists (maybe interrupted); done: trained and measured.
    status: Literal["pending", "running", "done"] = "pending"
    #: The point's run folder, relative to the sweep folder.
    run_dir: str
    #: The distilled student's parameters.
    params: int | None = None
    #: The distilled student's monitored metric on test, with its val-best weights (and all its metrics).
    metric: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    #: The same student trained from scratch (``train.baseline``), same split and weights.
    scratch_metric: float | None = None
    #: CPU latency of the exported student at batch 1 (onnxruntime, median of repeated runs), in
    #: milliseconds: ``fp32`` and, with ``--quantize int8``, ``int8``.
    latency_ms: dict[str, float] = Field(default_factory=dict)
    #: The int8 ONNX model's monitored metric (and all its metrics) on test.
    int8_metric: float | None = None
    int8_metrics: dict[str, float] = Field(default_factory=dict)
    #: The exported fp32 ONNX file, relative to the sweep folder.
    onnx: str | None = None


class SweepTeacher(BaseModel):
    """The one teacher of every point: its numbers are those of the first point's run."""

    model: str
    params: int
    #: "trained", "fine-tuned", "pretrained" or "checkpoint" (``StageResult.origin``).
    origin: str
    metric: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    #: The weights the later points load (None: a teacher as its factory delivers it).
    checkpoint: str | None = None


class SweepMeasure(BaseModel):
    """How the exported students are measured (kept for a resumed sweep)."""

    quantize: Literal["int8"] | None = None
    latency_runs: int = Field(10, ge=1)
    throughput_batch: int = Field(32, ge=1)
    calibration_images: int = Field(256, ge=1)
    #: onnxruntime's intra-op threads (as many as PyTorch's): latencies compare at equal threads.
    threads: int = 1


class SweepResult(BaseModel):
    name: str
    sweep_dir: str
    #: The command that makes this sweep (``kdengine sweep ...``), and the working directory's git
    #: revision (``-dirty`` with uncommitted changes), when it is a git checkout.
    command: str
    git_revision: str | None = None
    #: The recipe file (for messages) and the recipe every point starts from: ``--set`` applied,
    #: the teacher given by ``--teacher-from`` / ``--teacher-stage``, the shared cache folder.
    source: str
    recipe: dict[str, Any]
    overrides: list[str] = Field(default_factory=list)
    grid: list[SweepAxis]
    monitor: str
    higher_is_better: bool = True
    split: str = SWEEP_SPLIT
    measure: SweepMeasure = Field(default_factory=SweepMeasure)
    #: Where the teacher comes from, in words.
    teacher_note: str = ""
    teacher: SweepTeacher | None = None
    points: list[SweepPoint]
    #: False until every point is trained and measured.
    complete: bool = False

    def point(self, label: str) -> SweepPoint | None:
        return next((p for p in self.points if p.label == label), None)

    def save(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / "sweep.json", self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path) -> "SweepResult":
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
