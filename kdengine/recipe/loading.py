"""Loading a recipe: TOML (or a run folder's JSON) read with ``tomllib``, ``--set`` overrides, and
validation in two phases, both before any weights load.

Phase 1 checks the recipe's own shape (sections, types, ranges); phase 2 looks every component
up in the catalog and validates its ``params`` against the component's ``Params`` model. All
problems are collected and reported together, one per line, with the file and the path inside it::

    recipes/edge.toml: loss[0].params.temprature: extra inputs are not permitted

Relative paths in a recipe (data roots, checkpoints, output folder) are relative to the working
directory, as for any command-line tool.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import ValidationError

from kdengine.errors import KDEngineError, RecipeError
from kdengine.plugins.catalog import get_catalog
from kdengine.recipe.models import ComponentSpec, Recipe, TrainOverride, TrainSpec
from kdengine.recipe.problems import format_validation_error
from kdengine.recipe.shares import shares_problem

def parse_value(text: str) -> Any:
    """A ``--set`` (or ``--grid``) value: TOML when it parses as TOML, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def split_path(path: str) -> list[str | int]:
    """``loss[0].params.temperature`` -> ``["loss", 0, "params", "temperature"]``."""
    parts: list[str | int] = []
    for token in re.split(r"\.|\[", path.replace("]", "")):
        if token == "":
            raise KDEngineError(f"--set: malformed key '{path}'")
        parts.append(int(token) if token.isdigit() else token)
    return parts


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as TOML, else taken as strings)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise KDEngineError(f"--set '{item}': expected KEY=VALUE, e.g. train.epochs=3")
        key, _, text = item.partition("=")
        parts = split_path(key.strip())
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise KDEngineError(f"--set '{key}': no list item [{part}]")
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise KDEngineError(f"--set '{key}': '{part}' is not inside a table")
                node = node.setdefault(part, [] if isinstance(nxt, int) else {})
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise KDEngineError(f"--set '{key}': no list item [{last}]")
            node[last] = parse_value(text.strip())
        else:
            if not isinstance(node, dict):
                raise KDEngineError(f"--set '{key}': cannot set a key on a non-table")
            node[last] = parse_value(text.strip())
    return raw


def read_recipe_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), ["recipe file not found"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(str(path), [f"cannot read the file ({exc})"]) from exc
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(str(path), [f"invalid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}"]) from exc


def _component_problems(recipe: Recipe) -> list[str]:
    """Phase 2: every named component exists and its params validate."""
    catalog = get_catalog()
    specs: list[tuple[str, str, ComponentSpec]] = [
        ("dataset", "data", recipe.data),
        ("teacher", "teacher", recipe.teacher),
    ]
    if recipe.data.transfer is not None:
        specs.append(("dataset", "data.transfer", recipe.data.transfer))
    if recipe.student is not None:
        specs.append(("student", "student", recipe.student))
    specs += [("student", f"generation[{i}].student", g.student) for i, g in enumerate(recipe.generation or [])]
    specs += [("loss", f"loss[{i}]", spec) for i, spec in enumerate(recipe.loss)]
    specs += [("metric", f"metric[{i}]", spec) for i, spec in enumerate(recipe.metric)]
    problems: list[str] = []
    loss_classes = []
    for kind, where, spec in specs:
        try:
            cls = catalog.get(kind, spec.name)
        except KDEngineError as exc:
            problems.append(f"{where}.name: {exc}")
            continue
        if kind == "loss":
            loss_classes.append(cls)
        try:
            cls.Params.model_validate(spec.params)
        except ValidationError as exc:
            problems += format_validation_error(exc, prefix=(where, "params"))
    if not problems:
        columns = metric_columns(recipe)
        monitors = [("train.monitor", recipe.train.monitor)]
        if isinstance(recipe.teacher.train, TrainOverride):
            monitors.append(("teacher.train.monitor", recipe.teacher.train.monitor))
        for i, gen in enumerate(recipe.generation or []):
            if gen.train is not None:
                monitors.append((f"generation[{i}].train.monitor", gen.train.monitor))
        for where, monitor in monitors:
            if monitor is not None and monitor not in columns:
                problems.append(f"{where}: '{monitor}' is not a metric of this recipe; known: {', '.join(columns)}")
    trains_without_teacher = recipe.teacher.trains or recipe.train.baseline
    if (
        trains_without_teacher
        and len(loss_classes) == len(recipe.loss)
        and all(cls.needs_teacher for cls in loss_classes)
    ):
        problems.append(
            "loss: every loss term needs the teacher, so the teacher and the baseline student have "
            "nothing to train on; add a term such as cross_entropy"
        )
    if len(loss_classes) == len(recipe.loss):
        problems += _share_problems(recipe, [cls.needs_teacher for cls in loss_classes], trains_without_teacher)
    return problems


def _share_problems(recipe: Recipe, needs_teacher: list[bool], trains_without_teacher: bool) -> list[str]:
    """The auto terms' shares, checked now rather than at the start of a stage hours later: in
    the taught stages (every term) and in those without a teacher (the terms that need none)."""
    labels = [f"loss[{i}]" for i in range(len(recipe.loss))]
    found = [shares_problem(recipe.loss, labels)]
    kept = [i for i, needs in enumerate(needs_teacher) if not needs]
    if trains_without_teacher and 0 < len(kept) < len(recipe.loss):
        found.append(shares_problem([recipe.loss[i] for i in kept], [labels[i] for i in kept],
                                    " in the stages without a teacher"))
    return [problem for problem in found if problem]


def load_recipe(source: str | Path | Mapping[str, Any] | Recipe, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe (both phases). Raises RecipeError listing every problem."""
    if isinstance(source, Recipe):
        if not overrides:
            return source
        raw, where = source.to_dict(), source.source
    elif isinstance(source, Mapping):
        raw, where = dict(source), "<dict>"
    else:
        where = str(source)
        raw = read_recipe_file(Path(source))
    raw = apply_overrides(raw, overrides)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(where, format_validation_error(exc)) from None
    recipe._source = where
    problems = _component_problems(recipe)
    if problems:
        raise RecipeError(where, problems)
    return recipe


def metric_columns(recipe: Recipe) -> dict[str, bool]:
    """Every value the recipe's metrics report, in order, mapped to whether higher is better."""
    catalog = get_catalog()
    columns: dict[str, bool] = {}
    for spec in recipe.metric:
        cls = catalog.get("metric", spec.name)
        for key in cls.keys or (spec.name,):
            columns[key] = cls.higher_is_better
    return columns


def monitored_metric(recipe: Recipe, train: TrainSpec | None = None) -> tuple[str, bool]:
    """The metric that picks the best epoch, and whether higher is better."""
    columns = metric_columns(recipe)
    name = (train or recipe.train).monitor or next(iter(columns))
    return name, columns[name]

