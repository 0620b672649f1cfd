"""kdengine: knowledge distillation from one plugin-based engine.

The public API::

    import kdengine

    recipe = kdengine.load_recipe("recipes/classification.toml", overrides=["train.epochs=3"])
    results = kdengine.run(recipe)
    print(results.table())

Plugins subclass the component bases below and register them with ``@kdengine.hookimpl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdengine.components import (
    DataInfo,
    DatasetProvider,
    LossContext,
    LossTerm,
    Metric,
    ModelFactory,
    Params,
)
from kdengine.errors import (
    CheckpointError,
    DataError,
    KDEngineError,
    MissingSplitError,
    PluginError,
    RecipeError,
    TrainingError,
)
from kdengine.hookspecs import hookimpl
from kdengine.splits import fraction_count, holdout

if TYPE_CHECKING:
    from kdengine.engine import Results
    from kdengine.recipe import Recipe

__all__ = [
    "CheckpointError",
    "DataError",
    "DataInfo",
    "DatasetProvider",
    "KDEngineError",
    "LossContext",
    "LossTerm",
    "Metric",
    "MissingSplitError",
    "ModelFactory",
    "Params",
    "PluginError",
    "RecipeError",
    "TrainingError",
    "cache_teacher",
    "fraction_count",
    "hookimpl",
    "holdout",
    "load_recipe",
    "run",
]


def load_recipe(source: Any, overrides: list[str] | tuple[str, ...] = ()) -> "Recipe":
    """Load and fully validate a recipe from a TOML path or a dict (``--set`` style overrides)."""
    from kdengine.recipe import load_recipe as _load

    return _load(source, overrides=overrides)


def run(recipe: Any, **kwargs: Any) -> "Results":
    """Run a recipe (a :class:`Recipe`, a path or a dict) and return its results.

    Keyword arguments are those of :func:`kdengine.engine.run`.
    """
    from kdengine.engine import run as _run

    return _run(recipe, **kwargs)


def cache_teacher(recipe: Any, **kwargs: Any) -> list:
    """Build the teacher-output caches of a recipe whose teacher is a checkpoint (see
    :func:`kdengine.engine.cache_teacher`); returns the :class:`kdengine.cache.TeacherCache` objects."""
    from kdengine.engine import cache_teacher as _cache

    return _cache(recipe, **kwargs)
