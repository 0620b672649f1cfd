"""The ``train.optimizer`` and ``train.scheduler`` tables: each optimizer and each schedule
accepts its own keys only, with defaults that suit it."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import Discriminator, Field, Tag, field_validator

from kdengine.recipe.table import Table as _Section


class _DecaySplit(_Section):
    #: Weight decay of the one-dimensional parameters (normalisation scales and shifts, biases).
    #: None: ``weight_decay``, as the CIFAR benchmarks and the paper's recipes train; 0 leaves them
    #: undecayed, as timm and most ImageNet recipes do (decay pulls a norm's scale towards 0).
    norm_bias_weight_decay: float | None = Field(None, ge=0)


class SGDSpec(_DecaySplit):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)


class AdamSpec(_DecaySplit):
    name: Literal["adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)


class AdamWSpec(_DecaySplit):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    #: PyTorch's AdamW default: decoupled decay is the point of AdamW.
    weight_decay: float = Field(0.01, ge=0)


def _named(default: str):
    """The ``name`` of a tagged table, ``default`` when the table gives none (``{ lr = 0.1 }``)."""

    def tag(value: Any) -> str:
        if isinstance(value, Mapping):
            return value.get("name", default)
        return getattr(value, "name", default)
    return tag


#: ``train.optimizer``: each optimizer accepts its own keys only, with defaults that suit it.
OptimizerSpec = Annotated[
    Union[Annotated[SGDSpec, Tag("sgd")], Annotated[AdamSpec, Tag("adam")], Annotated[AdamWSpec, Tag("adamw")]],
    Discriminator(_named("sgd"), custom_error_type="optimizer_name",
                  custom_error_message="name: input should be 'sgd', 'adam' or 'adamw'"),
]


class _Schedule(_Section):
    #: Linear warm-up from lr/100 to lr over this many epochs (counted in optimizer steps).
    warmup_epochs: int = Field(0, ge=0)


class ConstantSchedule(_Schedule):
    name: Literal["none"] = "none"


class CosineSchedule(_Schedule):
    name: Literal["cosine"] = "cosine"
    #: The learning rate at the end of the stage.
    min_lr: float = Field(0.0, ge=0)


class StepSchedule(_Schedule):
    name: Literal["step"] = "step"
    #: Multiply the lr by ``gamma`` every ``step_size`` epochs ...
    step_size: int = Field(30, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    #: ... or at each of these epochs instead (the CIFAR benchmarks' 150, 180, 210 of 240).
    milestones: list[int] | None = Field(None, min_length=1)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (value[0] < 1 or any(b <= a for a, b in zip(value, value[1:]))):
            raise ValueError("milestones: epochs from 1 up, each later than the one before")
        return value


class PlateauSchedule(_Schedule):
    name: Literal["plateau"] = "plateau"
    #: Multiply the lr by ``factor`` after ``patience`` epochs without improvement of the monitor.
    patience: int = Field(2, ge=0)
    factor: float = Field(0.1, gt=0, lt=1)
    #: The lowest learning rate.
    min_lr: float = Field(0.0, ge=0)


#: ``train.scheduler``: each schedule accepts its own keys only.
SchedulerSpec = Annotated[
    Union[Annotated[ConstantSchedule, Tag("none")], Annotated[CosineSchedule, Tag("cosine")],
          Annotated[StepSchedule, Tag("step")], Annotated[PlateauSchedule, Tag("plateau")]],
    Discriminator(_named("none"), custom_error_type="scheduler_name",
                  custom_error_message="name: input should be 'none', 'cosine', 'step' or 'plateau'"),
]
