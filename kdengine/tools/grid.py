"""The grid of a compression sweep (``kdengine sweep --grid KEY=v1,v2``): its axes, its points
(with two axes, the cartesian product), and the checks that every point is a valid recipe and
that all points can share one teacher, made before anything trains.

An axis may be any recipe field, its values parsed like ``--set`` values, except those that would
give the points different teachers or different data, which the sweep's comparison rests on:

- ``teacher.*``: the points share one teacher;
- ``data.*``: the points are scored on one dataset, the one the teacher learnt;
- ``run.*``: ``run.seed`` fixes the teacher's training and the data order (``kdengine run
  --seeds`` is the way to vary seeds); ``run.name`` and ``run.output_dir`` only name folders;
- ``metric``: the points are compared on one metric;
- ``generation``, ``direct``: a sweep varies one ``[student]`` (a chain's generation can teach it:
  ``--teacher-stage``).

``[train]`` and ``[[loss]]`` fields are allowed unless the teacher trains and the value changes
its training: the teacher stage inherits ``[train]`` (less what ``[teacher] train`` overrides) and
the loss terms that need no teacher, and only the first point trains it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from kdengine.errors import KDEngineError, RecipeError
from kdengine.recipe import Recipe, load_recipe
from kdengine.recipe.loading import parse_value, split_path
from kdengine.train.setup import StageLosses

#: More axes make a grid nobody can read from one figure.
MAX_AXES = 2
REFUSED = {
    "teacher": "the points share one teacher",
    "data": "the points are scored on one dataset, the one their teacher learnt",
    "run": "run.seed fixes the teacher's training and the data order (vary seeds with kdengine run --seeds); "
           "run.name and run.output_dir only name folders",
    "metric": "the points are compared on one metric",
    "generation": "a sweep varies one [student]; a chain's generation can teach it (--teacher-stage)",
    "direct": "a sweep varies one [student]",
}
#: ``[train]`` settings that leave the teacher's weights as they are: a sweep may vary them even
#: when the first point trains the teacher.
NOT_TEACHER_WEIGHTS = frozenset({"baseline", "report_epochs", "log_with", "eval_batch_size", "num_workers"})


@dataclass(frozen=True)
class Axis:
    """One ``--grid KEY=v1,v2`` option: a recipe field and its values as written."""

    key: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Axis":
        key, sign, listed = text.partition("=")
        key = key.strip()
        if not sign or not key:
            raise KDEngineError(f"--grid '{text}': expected KEY=V1,V2,..., e.g. student.params.width_mult=1.0,0.5")
        try:
            section = split_path(key)[0]
        except KDEngineError:
            raise KDEngineError(f"--grid '{text}': malformed key '{key}'") from None
        if section in REFUSED:
            raise KDEngineError(f"--grid {key}: cannot be an axis: {REFUSED[section]}")
        values = tuple(split_values(listed))
        if any(not v for v in values):
            raise KDEngineError(f"--grid {key}: an empty value in '{listed}'")
        parsed = [parse_value(v) for v in values]
        repeated = next((v for i, v in enumerate(values) if parsed[i] in parsed[:i]), None)
        if repeated is not None:
            raise KDEngineError(f"--grid {key}: the value {repeated} is given twice")
        return cls(key, values)

    @property
    def leaf(self) -> str:
        """The field's own name (``width_mult``), for folder names and table columns."""
        return str([part for part in split_path(self.key) if isinstance(part, str)][-1])


@dataclass(frozen=True)
class Point:
    """One point of the grid: its folder name, its ``--set`` style overrides and their values."""

    label: str
    overrides: tuple[str, ...]
    #: The value's position on each axis.
    index: tuple[int, ...]

    @property
    def values(self) -> dict[str, Any]:
        return {o.partition("=")[0]: parse_value(o.partition("=")[2]) for o in self.overrides}


def split_values(text: str) -> list[str]:
    """``1.0,0.75`` -> ``["1.0", "0.75"]``; commas inside ``[...]``, ``{...}`` or quotes belong to
    their value, so lists, tables and strings are values too."""
    values, current, depth, quote = [], [], 0, None
    for char in text:
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(texts: list[str] | tuple[str, ...], overrides: list[str] | tuple[str, ...] = ()) -> list[Axis]:
    """The axes of ``--grid`` options: one or two, on different fields, none also given by ``--set``."""
    if not texts:
        raise KDEngineError("kdengine sweep: give at least one --grid KEY=V1,V2,...")
    if len(texts) > MAX_AXES:
        raise KDEngineError(f"--grid: at most {MAX_AXES} axes (got {len(texts)}); sweep the others separately")
    axes = [Axis.parse(text) for text in texts]
    if len({axis.key for axis in axes}) < len(axes):
        raise KDEngineError(f"--grid {axes[0].key}: the same field on two axes")
    fixed = {item.partition("=")[0].strip() for item in overrides}
    clash = next((axis.key for axis in axes if axis.key in fixed), None)
    if clash is not None:
        raise KDEngineError(f"--grid {clash}: also given by --set; give it in one place")
    return axes


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:40] or "value"


def grid_points(axes: list[Axis]) -> list[Point]:
    """Every combination of the axes' values, the first axis varying slowest, numbered in order
    (``01-width_mult-1.0``): the number keeps folder names unique and in the grid's order."""
    points = []
    ranges = [range(len(axis.values)) for axis in axes]
    for number, index in enumerate(itertools.product(*ranges), start=1):
        label = "_".join(f"{axis.leaf}-{_safe(axis.values[i])}" for axis, i in zip(axes, index))
        overrides = tuple(f"{axis.key}={axis.values[i]}" for axis, i in zip(axes, index))
        points.append(Point(f"{number:02d}-{label}", overrides, index))
    return points


def with_grid_values(base: Recipe, overrides: tuple[str, ...] | list[str]) -> Recipe:
    """``base`` with one point's values, validated like any recipe; a problem names the field
    and the ``--grid`` value that caused it."""
    try:
        return load_recipe(base, overrides=list(overrides))
    except RecipeError as exc:
        given = " ".join(overrides)
        raise RecipeError(exc.source, [f"{problem} (--grid {given})" for problem in exc.problems]) from None
    except KDEngineError as exc:  # a malformed path: apply_overrides words it for --set
        raise KDEngineError(str(exc).replace("--set ", "--grid ", 1)) from None


def point_recipes(base: Recipe, axes: list[Axis], points: list[Point]) -> list[Recipe]:
    """Every point's recipe, validated before anything trains: each axis value alone first (so
    that a bad value is named as such), then every combination; then the shared-teacher check."""
    if base.student is None:
        raise KDEngineError(f"{base.source}: kdengine sweep varies a [student]; this recipe is a progressive chain "
                            "([[generation]]); its generations can teach a sweep (--teacher-from RUN_DIR "
                            "--teacher-stage NAME)")
    for axis in axes:
        for value in axis.values:
            with_grid_values(base, [f"{axis.key}={value}"])
    recipes = [with_grid_values(base, point.overrides) for point in points]
    check_one_teacher(base, axes, points, recipes)
    return recipes


def teacher_training(recipe: Recipe) -> dict[str, Any]:
    """What the teacher stage trains with: its ``[train]`` settings (the ones that change its
    weights) and the loss terms that need no teacher, with the weights they train with."""
    train = recipe.teacher_train().model_dump(mode="json", exclude=set(NOT_TEACHER_WEIGHTS))
    losses = StageLosses.of(recipe, taught=False)
    specs, weights = losses.specs, losses.weights
    loss = [{**spec.model_dump(mode="json", exclude={"weight"}), "weight": weight} for spec, weight in zip(specs, weights)]
    return {"train": train, "loss": loss}


def check_one_teacher(base: Recipe, axes: list[Axis], points: list[Point], recipes: list[Recipe]) -> None:
    """When the first point trains the teacher, refuse an axis that would have trained another
    teacher at some point: the later points load the first point's."""
    if not base.teacher.trains:
        return  # a checkpoint, or the factory's model: the same teacher whatever the axis
    trainings = [teacher_training(recipe) for recipe in recipes]
    for k, axis in enumerate(axes):
        seen: dict[tuple[int, ...], dict[str, Any]] = {}  # points that differ on this axis alone
        for point, training in zip(points, trainings):
            others = point.index[:k] + point.index[k + 1:]
            if seen.setdefault(others, training) != training:
                raise KDEngineError(
                    f"{base.source}: --grid {axis.key}: changes how the teacher trains (its stage inherits [train] "
                    "and the loss terms without a teacher), but the points share the teacher that the first one "
                    "trains: give the teacher its own value in [teacher] train = {...}, or a trained teacher "
                    "(teacher.checkpoint or --teacher-from)")
