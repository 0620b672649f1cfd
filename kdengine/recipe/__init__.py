"""Recipes: pydantic models of a recipe (:mod:`.models`), TOML loading, ``--set`` overrides and the
second validation phase (:mod:`.loading`), stage planning (:mod:`.stages`), the JSON Schema
(:mod:`.schema`)."""

from kdengine.recipe.loading import apply_overrides, load_recipe, metric_columns, monitored_metric, read_recipe_file
from kdengine.recipe.models import (
    AdamSpec,
    AdamWSpec,
    ComponentSpec,
    DataSpec,
    GenerationSpec,
    LossSpec,
    OptimizerSpec,
    Recipe,
    RunSection,
    SchedulerSpec,
    SGDSpec,
    TeacherSpec,
    TrainOverride,
    TrainSpec,
)

__all__ = [
    "AdamSpec", "AdamWSpec", "ComponentSpec", "DataSpec", "GenerationSpec", "LossSpec", "OptimizerSpec",
    "Recipe", "RunSection", "SGDSpec", "SchedulerSpec", "TeacherSpec", "TrainOverride", "TrainSpec",
    "apply_overrides", "load_recipe", "metric_columns", "monitored_metric", "read_recipe_file",
]
