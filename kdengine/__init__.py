"""kdengine: knowledge distillation from one plugin-based engine.

The public API::

    import kdengine

    recipe = kdengine.load_recipe("recipes/classification.toml", overrides=["train.epochs=3"])
    results = kdengine.run(recipe)
    print(kdengine.table(results))

Plugins subclass the component bases below and register them with ``@kdengine.hookimpl``; the
helpers after them (feature maps and adapters, a module by its dotted path, data fingerprints,
reading a state dict, hub downloads that honour offline mode) are the plugin author's toolkit.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from kdengine.errors import (CheckpointError, DataError, KDEngineError, MissingSplitError, PluginError, RecipeError,
                             TrainingError, WeightsUnavailableError)
from kdengine.io.fingerprint import describe_params, fingerprint_files
from kdengine.io.hub import download_errors, downloads_forbidden, hub_cache_dir, hub_offline_from_env, torch_hub_cached_file
from kdengine.io.weights import load_weights, read_state_dict
from kdengine.plugins.components import DataInfo, DatasetProvider, LossContext, LossTerm, Metric, ModelFactory, Params
from kdengine.plugins.features import as_feature_map, make_adapter, resolve_module
from kdengine.plugins.hookspecs import hookimpl
from kdengine.plugins.splits import fraction_count, holdout

if TYPE_CHECKING:
    from kdengine.recipe import Recipe
    from kdengine.io.results import Results
    from kdengine.reporting.summary import SeedSummary
    from kdengine.reporting.sweep_results import SweepResult

try:
    __version__ = version("kdengine")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CheckpointError", "DataError", "DataInfo", "DatasetProvider", "KDEngineError", "LossContext", "LossTerm",
    "Metric", "MissingSplitError", "ModelFactory", "Params", "PluginError", "RecipeError", "TrainingError",
    "WeightsUnavailableError", "__version__", "as_feature_map", "cache_teacher", "describe_params", "download_errors",
    "downloads_forbidden", "evaluate", "fingerprint_files", "fraction_count", "hookimpl", "holdout", "hub_cache_dir",
    "hub_offline_from_env", "load_recipe", "load_weights", "make_adapter", "read_state_dict", "resolve_module", "resume",
    "run", "sweep", "table", "torch_hub_cached_file",
]


def load_recipe(source: Any, overrides: list[str] | tuple[str, ...] = ()) -> "Recipe":
    """Load and fully validate a recipe from a TOML path or a dict (``--set`` style overrides)."""
    from kdengine.recipe import load_recipe as _load

    return _load(source, overrides=overrides)


def run(recipe: Any, **kwargs: Any) -> "Results | SeedSummary":
    """Run a recipe (a :class:`Recipe`, a path or a dict) and return its results; see
    :func:`kdengine.api.run` for the keyword arguments."""
    from kdengine.api import run as _run

    return _run(recipe, **kwargs)


def resume(run_dir: Any, **kwargs: Any) -> "Results":
    """Continue an interrupted run in its own folder; see :func:`kdengine.api.resume`."""
    from kdengine.api import resume as _resume

    return _resume(run_dir, **kwargs)


def evaluate(run_dir: Any, **kwargs: Any) -> Any:
    """Score a finished run's stages again on val or test, best or last weights; see
    :func:`kdengine.api.evaluate`."""
    from kdengine.api import evaluate as _evaluate

    return _evaluate(run_dir, **kwargs)


def cache_teacher(recipe: Any, **kwargs: Any) -> list:
    """Build the teacher-output caches of a recipe whose teacher is a checkpoint; see
    :func:`kdengine.api.cache_teacher`."""
    from kdengine.api import cache_teacher as _cache

    return _cache(recipe, **kwargs)


def sweep(recipe: Any = None, grid: Any = (), **kwargs: Any) -> "SweepResult":
    """Train and measure the recipe's student at every point of a grid of recipe values (one or
    two ``"KEY=v1,v2"`` axes), one teacher for all, or continue a killed sweep (``resume=DIR``);
    see :func:`kdengine.api.sweep.sweep`."""
    from kdengine.api.sweep import sweep as _sweep

    return _sweep(recipe, grid, **kwargs)


def table(results: "Results | SeedSummary") -> str:
    """The results table (Markdown) of a run, or the mean ± std table of a multi-seed run."""
    from kdengine.reporting.tables import table as _table

    return _table(results)
