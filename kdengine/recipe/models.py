"""The recipe's pydantic models: every table and key a recipe may have, with its type, range and
default. Unknown keys are errors (``extra="forbid"``). Loading and the second validation phase
(each component's own ``Params``) are in :mod:`kdengine.recipe.loading`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, PlainValidator, PrivateAttr, ValidationError, field_validator, model_validator

# The optimizer and schedule tables live in their own module; their names stay importable from here.
from kdengine.recipe.optimizers import (AdamSpec, AdamWSpec, ConstantSchedule, OptimizerSpec,  # noqa: F401
                                        SchedulerSpec, SGDSpec)
from kdengine.recipe.problems import format_validation_error
from kdengine.recipe.table import Table as _Section
from kdengine.recipe.trackers import check_tracker_names, supported_trackers
from kdengine.recipe.units import parse_size


class RunSection(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = Field(0, ge=0)
    #: Repeat the whole run once per seed and report mean +- std (overrides ``seed``).
    seeds: list[int] | None = Field(None, min_length=1)
    #: Parent folder of run folders; each run gets ``<output_dir>/<name>-<timestamp>``.
    output_dir: Path = Path("runs")


class ComponentSpec(_Section):
    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


def _loss_weight(value: Any) -> float | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError('input should be a number or "auto"')
    if value < 0:
        raise ValueError('input should be greater than or equal to 0 (or "auto")')
    return float(value)


#: A loss term's weight: a number, or "auto" (measured before the stage's first step).
LossWeight = Annotated[Union[float, Literal["auto"]],
                       PlainValidator(_loss_weight, json_schema_input_type=Union[Annotated[float, Field(ge=0)],
                                                                                 Literal["auto"]])]


class LossSpec(ComponentSpec):
    #: A number, or "auto": chosen from each term's gradient norm, measured on the stage's first
    #: ``train.balance_steps`` batches, so that this term makes ``share`` of the total gradient.
    weight: LossWeight = 1.0
    #: With ``weight = "auto"``: this term's share of the total gradient norm, in (0, 1);
    #: default: 1 / the number of terms in the stage.
    share: float | None = Field(None, gt=0, lt=1)
    #: The term's weight rises linearly over its first epochs: ``epoch / warmup_epochs`` of it in
    #: epoch 1, 2, ... and all of it from epoch ``warmup_epochs`` on (DKD's 20 epochs on CIFAR-100,
    #: which keep a strong distillation term from swamping a random student at the start).
    warmup_epochs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _share_needs_auto(self) -> "LossSpec":
        if self.share is not None and self.weight != "auto":
            raise ValueError('share: only a term with weight = "auto" has a share; give weight = "auto" or drop share')
        return self


class TransferSpec(ComponentSpec):
    """``[data.transfer]``: a dataset whose train images enter the taught stages with the
    teacher's outputs as their only targets (Beyer et al. 2022: the teacher labels what the labels
    do not cover). Its labels, if it has any, are never read."""

    #: Transfer rows added to every step, per labelled row of the batch (1.0: as many as the batch).
    ratio: float = Field(1.0, gt=0, le=16)

    def rows(self, batch_size: int) -> int:
        return max(1, round(batch_size * self.ratio))


class DataSpec(ComponentSpec):
    """The ``[data]`` table: the dataset's name and params, and what to do with bad samples."""

    #: A sample whose file is unreadable or truncated, whose annotation is missing, or whose
    #: image and label sizes disagree: stop with an error naming the file, or leave the sample
    #: out and report the count (and the files) in the results and a warning at the start.
    on_bad_sample: Literal["error", "skip"] = "error"
    #: Images the teacher alone labels, beside the labelled ones (None: none).
    transfer: TransferSpec | None = None


MixedPrecision = Literal["no", "bf16", "fp16"]


def _tracker_names_schema(schema: dict[str, Any]) -> None:
    """``train.log_with`` in the JSON Schema: the tracker names Accelerate knows, for completion."""
    schema["items"] = {"type": "string", "enum": supported_trackers()}


class TrainSpec(_Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    #: Evaluation batch size; defaults to ``batch_size``.
    eval_batch_size: int | None = Field(None, ge=1)
    optimizer: OptimizerSpec = Field(default_factory=SGDSpec)
    scheduler: SchedulerSpec = Field(default_factory=ConstantSchedule)
    #: Training precision: float32, or autocast to bf16, or to fp16 with a gradient scaler.
    #: ``[teacher] train`` and ``[[generation]] train`` may give each stage its own.
    mixed_precision: MixedPrecision = "no"
    channels_last: bool = False
    #: Also train the student from scratch, with the same seed and budget, for the comparison.
    baseline: bool = True
    #: With ``[data.transfer]``: also train the student from scratch on the labels and the
    #: transfer images with the teacher's hard labels (stage ``scratch-transfer``), so that a
    #: reader can tell the teacher's knowledge from the extra images.
    baseline_transfer: bool = False
    #: Metric choosing the best epoch; defaults to the first metric's (first) value.
    monitor: str | None = None
    #: The split that every choice during training is made on (best epoch, plateau schedule, a
    #: chain's best teacher). "test" is for a quick look only: the tables then say so.
    monitor_split: Literal["val", "test"] = "val"
    #: Evaluate on the monitor split every N epochs (and always after the last).
    eval_every: int = Field(1, ge=1)
    #: Epochs whose metrics are reported in the results table beside best and last.
    report_epochs: list[int] = Field(default_factory=list)
    grad_clip: float | None = Field(None, gt=0)
    #: A non-finite loss, or non-finite gradients in bf16 or float32: stop the run (keeping the
    #: last good checkpoint), or skip the batch and count it in the results. (Under fp16 the
    #: gradient scaler skips an overflowed step itself, and the results count it as scaler_skipped.)
    #: With Adam or AdamW the update is skipped on the device and the check read once per 32 steps,
    #: so a stop comes up to 31 steps later (the failed step made no update; the steps after it did)
    #: and a skipped batch still advances the learning-rate schedule by its step.
    on_nan: Literal["stop", "skip"] = "stop"
    num_workers: int = Field(0, ge=0)
    #: Cap on optimizer steps per epoch (quick experiments; None = the whole train split).
    max_steps_per_epoch: int | None = Field(None, ge=1)
    #: Experiment trackers (Accelerate's): "tensorboard", "mlflow", "wandb", ...; every loss term,
    #: metric, lr and epoch time per stage, and the recipe as hyperparameters. Files go to
    #: ``<run folder>/tracking/``.
    log_with: list[str] = Field(default_factory=list, json_schema_extra=_tracker_names_schema)
    #: Memory budget ("4GiB", "512MiB"): the largest micro-batch that fits is measured and the
    #: batch is trained with gradient accumulation (process memory on CPU, device memory on GPU).
    max_memory: str | None = None
    #: Batches at the start of a stage on which the gradient of each loss term is measured, for
    #: the terms with ``weight = "auto"`` (no update is made on them).
    balance_steps: int = Field(5, ge=1)
    #: Keep fewer activations in the forward pass and recompute them in the backward (less memory,
    #: about a third more compute): through ``checkpoint_modules`` when given, else the model's own
    #: ``set_grad_checkpointing()`` (timm); a model with neither is a recipe error.
    activation_checkpointing: bool = False
    #: Module paths of the trained model to checkpoint (``["features.3", "features.7"]``, as listed
    #: by ``kdengine layers``); used when ``activation_checkpointing`` is true.
    checkpoint_modules: list[str] = Field(default_factory=list)
    #: torch.compile the trained model and the frozen teacher that teaches it (the first steps
    #: are slower while the graphs compile; checkpoints hold the plain model's weights).
    compile: bool = False

    @field_validator("max_memory")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("log_with")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        return check_tracker_names(names)

    @model_validator(mode="after")
    def _report_epochs_in_range(self) -> "TrainSpec":
        bad = [e for e in self.report_epochs if not 1 <= e <= self.epochs]
        if bad:
            raise ValueError(f"report_epochs: {bad} outside 1..epochs ({self.epochs})")
        return self


class TrainOverride(_Section):
    """Per-stage changes to ``[train]``; a value given here replaces the one in ``[train]``."""

    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    optimizer: OptimizerSpec | None = None
    scheduler: SchedulerSpec | None = None
    mixed_precision: MixedPrecision | None = None
    channels_last: bool | None = None
    monitor: str | None = None
    eval_every: int | None = Field(None, ge=1)
    report_epochs: list[int] | None = None
    grad_clip: float | None = Field(None, gt=0)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    max_memory: str | None = None
    balance_steps: int | None = Field(None, ge=1)
    activation_checkpointing: bool | None = None
    checkpoint_modules: list[str] | None = None
    compile: bool | None = None

    def apply(self, base: TrainSpec) -> TrainSpec:
        update = self.model_dump(exclude_unset=True)
        merged = base.model_dump()
        merged.update(update)
        if "report_epochs" not in update:  # inherited report epochs beyond this stage's length are dropped
            merged["report_epochs"] = [e for e in base.report_epochs if e <= merged["epochs"]]
        return TrainSpec.model_validate(merged)


class TeacherSpec(ComponentSpec):
    #: Trained teacher weights to load instead of training the teacher.
    checkpoint: Path | None = None
    #: Changes to ``[train]`` for the teacher stage (a pretrained teacher's fine-tuning: fewer
    #: epochs, a lower lr), or ``false``: the teacher is used as its factory delivers it
    #: (pretrained weights, or weights a plugin bundles), evaluated once and never trained.
    train: TrainOverride | Literal[False] | None = None
    #: The teacher stage trains only the classifier head for its first N epochs (the backbone's
    #: weights and batch-norm statistics stay as delivered), then the whole model.
    freeze_backbone_epochs: int = Field(0, ge=0)
    #: With several seeds (``run.seeds``): train one teacher per seed instead of one teacher,
    #: trained with the first seed, that every seed's students learn from.
    per_seed: bool = False
    #: Compute the teacher's outputs on the students' augmented batches once, store them on disk
    #: (memory-mapped) and train students without the teacher in memory.
    cache: bool = False
    #: Where caches live (default: ``teacher-cache/`` in the run's output folder); one sub-folder
    #: per key (teacher weights, data, augmentation, seed, batch layout, precision).
    cache_dir: Path | None = None
    #: Storage type of cached outputs and features.
    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    #: Rows per teacher forward pass while building (consecutive student batches are joined);
    #: default: the student's batch size.
    cache_batch_size: int | None = Field(None, ge=1)
    #: Classification: store each row's k largest logits (with their classes) instead of all of
    #: them; reading rebuilds the rest so the top-k probabilities at T = 1 are the teacher's
    #: exactly (:mod:`kdengine.teacher.topk`). None: the full logits.
    cache_topk: int | None = Field(None, ge=1)
    #: How many epochs of augmented batches the cache holds: a stage longer than that trains on
    #: them again in turn (epoch e on the data order and augmentation draws of epoch
    #: ``(e - 1) % cache_views + 1``), so the teacher runs on ``cache_views`` epochs of data,
    #: not on every epoch. None: one per epoch the stage trains (every epoch's draws are new).
    cache_views: int | None = Field(None, ge=1)
    #: The frozen teacher's precision when it teaches (and builds the cache): "same" as the
    #: stage's ``train.mixed_precision``, "no" (float32), "bf16", "fp16", or "auto": the fastest,
    #: measured on the first batch (bf16 and channels_last help some models and hurt others).
    precision: Literal["same", "no", "bf16", "fp16", "auto"] = "same"
    #: The teacher's memory format when it teaches (default: the stage's ``train.channels_last``;
    #: measured too under ``precision = "auto"``).
    channels_last: bool | None = None

    @field_validator("train", mode="before")
    @classmethod
    def _true_means_train(cls, value: Any) -> Any:
        return None if value is True else value  # ``train = true``: the [train] settings as they are

    @property
    def trains(self) -> bool:
        """Whether the run trains the teacher (not when it is a checkpoint or ``train = false``)."""
        return self.checkpoint is None and self.train is not False

    @model_validator(mode="after")
    def _topk_needs_the_cache(self) -> "TeacherSpec":
        if self.cache_topk is not None and not self.cache:
            raise ValueError("cache_topk: only the teacher-output cache stores top-k logits; set cache = true "
                             "or drop cache_topk")
        if self.cache_views is not None and not self.cache:
            raise ValueError("cache_views: only the teacher-output cache replays epochs of augmented batches; "
                             "set cache = true or drop cache_views")
        return self

    @model_validator(mode="after")
    def _freeze_needs_training(self) -> "TeacherSpec":
        if self.freeze_backbone_epochs and not self.trains:
            how = "teacher.checkpoint is given" if self.checkpoint is not None else "teacher.train = false"
            raise ValueError(f"freeze_backbone_epochs: the teacher is not trained ({how})")
        return self


STAGE_NAME = r"^[a-z0-9][a-z0-9_.-]*$"
RESERVED_STAGES = ("teacher", "scratch", "distilled", "direct")


class GenerationSpec(_Section):
    """One student generation of a progressive chain; generation 1 is ``[teacher]``."""

    #: The stage's name in tables and the run folder (``checkpoints/<name>/``).
    name: str = Field(pattern=STAGE_NAME, max_length=60)
    student: ComponentSpec
    #: The stage that teaches this generation: ``teacher`` or an earlier generation's name
    #: (default: the previous generation).
    teacher: str | None = None
    #: Which weights of the teaching stage to use: its best epoch or its last.
    weights: Literal["best", "last"] = "best"
    train: TrainOverride | None = None


class Recipe(_Section):
    run: RunSection
    data: DataSpec
    teacher: TeacherSpec
    #: The student, for a single teacher -> student distillation ...
    student: ComponentSpec | None = None
    #: ... or a chain of student generations, each taught by an earlier one.
    generation: list[GenerationSpec] | None = Field(None, min_length=1)
    #: With generations: also distil the last generation's student directly from the teacher.
    direct: bool = False
    train: TrainSpec
    loss: list[LossSpec] = Field(min_length=1)
    metric: list[ComponentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _transfer_in_one_pass(self) -> "Recipe":
        # a batch of labelled and transfer rows is trained in one pass: its split into micro-batches
        # would have to keep the labels with their rows, which it does not
        if self.data.transfer is not None and self.train.max_memory is not None:
            raise ValueError("data.transfer: a transfer set trains each batch in one pass; it cannot be "
                             "combined with train.max_memory (lower train.batch_size or data.transfer.ratio)")
        if self.train.baseline_transfer and self.data.transfer is None:
            raise ValueError("train.baseline_transfer: trains scratch on the transfer images with the teacher's "
                             "hard labels, so it needs a [data.transfer] set")
        if self.train.baseline_transfer and self.generation is not None:
            raise ValueError("train.baseline_transfer: is for a [student] recipe, not a progressive chain")
        return self

    @model_validator(mode="after")
    def _student_or_generations(self) -> "Recipe":
        if (self.student is None) == (self.generation is None):
            raise ValueError("give either [student] or [[generation]] (a progressive chain), not both or neither")
        if self.direct and self.generation is None:
            raise ValueError("direct = true needs [[generation]]")
        overrides = [("teacher.train", self.teacher.train)]
        overrides += [(f"generation[{i}].train", g.train) for i, g in enumerate(self.generation or [])]
        for where, override in overrides:
            if isinstance(override, TrainOverride):
                try:
                    override.apply(self.train)
                except ValidationError as exc:
                    raise ValueError("; ".join(format_validation_error(exc, prefix=(where,)))) from None
        seen = ["teacher"]
        for i, gen in enumerate(self.generation or []):
            if gen.name in RESERVED_STAGES or gen.name in seen:
                raise ValueError(f"generation[{i}].name: '{gen.name}' is reserved or already used")
            if gen.teacher is not None and gen.teacher not in seen:
                raise ValueError(
                    f"generation[{i}].teacher: '{gen.teacher}' is not the teacher or an earlier generation "
                    f"(known: {', '.join(seen)})"
                )
            seen.append(gen.name)
        freeze = self.teacher.freeze_backbone_epochs
        if freeze > self.teacher_train().epochs:
            raise ValueError(f"teacher.freeze_backbone_epochs: {freeze} is more than the teacher's "
                             f"{self.teacher_train().epochs} epochs")
        return self

    _source: str = PrivateAttr("<recipe>")

    @property
    def source(self) -> str:
        """The file the recipe came from (or ``<dict>``), for messages."""
        return self._source

    def teacher_train(self) -> TrainSpec:
        """The ``[train]`` settings with the teacher's overrides applied (the evaluation settings
        of a teacher that is not trained)."""
        train = self.teacher.train
        return train.apply(self.train) if isinstance(train, TrainOverride) else self.train

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
