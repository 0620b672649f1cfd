"""What a run produces: one record per stage, serialisable to ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

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
    #: The epoch's wall time: its training steps and its evaluation on the monitor split.
    seconds: float = 0.0
    #: Of ``seconds``: the training steps alone (with the teacher's forward passes), and the
    #: evaluation alone (0 in epochs that ``train.eval_every`` skips).
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
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
    #: False when this run did not train the stage's weights (a teacher given as a checkpoint,
    #: used as its factory delivers it, or shared from another seed's run).
    trained: bool = True
    #: Where the weights come from: "trained" from the factory's fresh initialisation,
    #: "fine-tuned" from the factory's pretrained weights, "pretrained": the factory's weights
    #: used as delivered (``teacher.train = false``), "checkpoint": ``teacher.checkpoint``.
    origin: Literal["trained", "fine-tuned", "pretrained", "checkpoint"] = "trained"
    #: A teacher shared by the seeds of a multi-seed run: the seed whose run trained it. Its
    #: numbers are that run's.
    shared_from_seed: int | None = None
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
    #: How the stage used ``[data.transfer]``: its rows per step, the set, and what labelled them
    #: (None: the stage never saw it).
    transfer: str | None = None
    #: Position in a progressive chain (the teacher is generation 1); None outside chains.
    generation: int | None = None
    #: Rows per forward/backward pass when ``train.max_memory`` split the batch (None: whole batch).
    micro_batch: int | None = None
    #: The loss weights the stage trained with, by term (``name``, ``name#2`` for a second term of
    #: the same name), when some were ``"auto"``: measured before its first step (empty otherwise).
    loss_weights: dict[str, float] = Field(default_factory=dict)
    #: With micro-batches: the loss terms (recipe names) and BatchNorm layers that saw each
    #: micro-batch instead of the whole batch, so the gradient was not the whole batch's.
    micro_batch_coupled: list[str] = Field(default_factory=list)
    #: How the teacher ran when it taught this stage: ``{"precision": "no" | "bf16" | "fp16",
    #: "channels_last": bool}``, the measured choice under ``teacher.precision = "auto"``.
    teacher_inference: dict[str, str | bool] | None = None
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
