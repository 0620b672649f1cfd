"""What a run produces: one record per stage, serialisable to ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from kdengine.io.atomic import atomic_write_text


#: How many skipped samples ``results.json`` names one by one (all are counted).
SKIPPED_LISTED = 20


class EpochRecord(BaseModel):
    epoch: int
    losses: dict[str, float] = Field(default_factory=dict)
    #: The monitor split's metrics (val, unless ``train.monitor_split = "test"``); empty in epochs
    #: that ``train.eval_every`` skips.
    metrics: dict[str, float] = Field(default_factory=dict)
    lr: float | None = None
    seconds: float = 0.0
    #: Batches left out under ``train.on_nan = "skip"`` (a non-finite loss or gradients).
    skipped_batches: int = 0
    #: fp16: steps whose update the gradient scaler skipped (overflowed gradients; the scale was
    #: lowered and training went on).
    scaler_skipped: int = 0


class StageResult(BaseModel):
    #: ``teacher``, ``scratch`` (student without the teacher) or ``distilled``.
    stage: str
    #: Human-readable model description, e.g. ``timm resnet18 (cifar_stem)``.
    model: str
    params: int
    trained: bool = True
    #: The epoch whose weights are the stage's best, chosen on the monitor split.
    best_epoch: int | None = None
    #: The monitor split's metrics (val) at the best epoch and at the last.
    best: dict[str, float] = Field(default_factory=dict)
    last: dict[str, float] = Field(default_factory=dict)
    at_epochs: dict[int, dict[str, float]] = Field(default_factory=dict)
    #: The test split, scored once at the end of the stage: with the best weights, with the last.
    test_best: dict[str, float] = Field(default_factory=dict)
    test_last: dict[str, float] = Field(default_factory=dict)
    history: list[EpochRecord] = Field(default_factory=list)
    seconds: float = 0.0
    #: Weights of the best epoch, relative to the run folder.
    checkpoint: str | None = None
    #: The stage that taught this one (None: trained on the labels alone).
    teacher: str | None = None
    #: Position in a progressive chain (the teacher is generation 1); None outside chains.
    generation: int | None = None
    #: Rows per forward/backward pass when ``train.max_memory`` split the batch (None: whole batch).
    micro_batch: int | None = None
    #: The stage's training precision (``train.mixed_precision``: "no", "bf16" or "fp16").
    precision: str = "no"
    #: fp16: steps of the whole stage whose update the gradient scaler skipped.
    scaler_skipped: int = 0


class Results(BaseModel):
    name: str
    run_dir: str
    seed: int
    monitor: str
    higher_is_better: bool = True
    #: The split that chose the best epochs: "val", or "test" when the recipe asked for a quick look.
    monitor_split: str = "val"
    stages: list[StageResult] = Field(default_factory=list)
    seconds: float = 0.0
    #: False while the run is under way (or was interrupted): only finished stages are listed.
    complete: bool = False
    #: Bad samples left out under ``data.on_bad_sample = "skip"``: how many, and the first
    #: ``SKIPPED_LISTED`` of them, each naming its file and the problem.
    skipped_samples: int = 0
    skipped_files: list[str] = Field(default_factory=list)

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.stage == name), None)

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path) -> "Results":
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
