"""``kdengine sweep RECIPE --grid student.params.width_mult=1.0,0.5``: how small can the student be
for the accuracy needed, and what does it cost on a CPU?

Every point of the grid (:mod:`kdengine.tools.grid`) is a normal run of the recipe with that
point's values, in ``<sweep folder>/points/<label>/``, its scratch baseline included when
``train.baseline``; then its distilled student is exported to ONNX (and, with ``quantize="int8"``,
quantised) and timed on the CPU by :func:`kdengine.tools.export.export_run`. One teacher teaches
every point: the first point trains it (when the recipe trains it) and the later points load its
best weights, as the seeds of a multi-seed run do; with ``teacher.cache = true`` all points read
one teacher-output cache in ``<sweep folder>/teacher-cache/``: the points differ in the student
only, so the cache's key (teacher weights, data, seed, batch layout, precision) is the same.

The sweep folder::

    <output_dir>/<name>-<timestamp>-sweep/
        sweep.json    the grid, the command, every point's status, numbers and run folder
        sweep.md      one row per point, the teacher's first
        sweep.png     the metric against parameters and against measured CPU latency (at the end)
        points/<label>/        each point's run folder (export/onnx/ holds its ONNX files)
        teacher-cache/         with teacher.cache = true

``sweep.json`` and ``sweep.md`` are rewritten after every point, so a killed sweep resumes
(``kdengine sweep --resume SWEEP_DIR``): finished points are kept, an interrupted point's run
continues with the engine's own resume, and the rest run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import torch

from kdengine import api
from kdengine.api import RecipeSource
from kdengine.errors import KDEngineError
from kdengine.recipe import Recipe, load_recipe, monitored_metric
from kdengine.reporting.progress import console
from kdengine.io.results import Results, StageResult
from kdengine.reporting.sweep_report import plot_sweep, write_sweep_markdown
from kdengine.reporting.sweep_results import SweepAxis, SweepMeasure, SweepPoint, SweepResult, SweepTeacher
from kdengine.reporting.tables import format_params, format_value
from kdengine.api.reuse import shared_teacher, teacher_from_run, teacher_from_stage, with_teacher_checkpoint
from kdengine.tools.export import export_run
from kdengine.tools.measure import require_export_extra
from kdengine.tools.grid import grid_points, parse_grid, point_recipes, with_grid_values
from kdengine.train.run import run_one


def sweep(recipe: RecipeSource | None = None, grid: list[str] | tuple[str, ...] = (), *,
          overrides: list[str] | tuple[str, ...] = (), output_dir: str | Path | None = None,
          quantize: str | None = None, teacher_from: str | Path | None = None, teacher_stage: str | None = None,
          resume: str | Path | None = None, progress: bool = True, latency_runs: int = 10,
          throughput_batch: int = 32, calibration_images: int = 256) -> SweepResult:
    """Train and measure the recipe's student at every point of ``grid`` (one or two
    ``"KEY=v1,v2"`` axes), all taught by one teacher, and return the sweep's record.

    ``teacher_from``: a finished run whose trained teacher teaches every point; with
    ``teacher_stage``, that run's stage of this name (a progressive chain's generation, or
    ``gen<N>``), whose model then becomes the teacher. ``quantize="int8"``: also time and score a
    static int8 ONNX model per point. ``resume``: continue a killed sweep in its folder (nothing
    else may be given)."""
    if resume is not None:
        if recipe is not None or grid or overrides or output_dir or quantize or teacher_from or teacher_stage:
            raise KDEngineError("--resume takes the recipe, the grid and the options from the sweep folder; "
                                "give none of them")
        return resume_sweep(resume, progress=progress)
    if recipe is None:
        raise KDEngineError("kdengine sweep: give a recipe file (or --resume SWEEP_DIR)")
    axes = parse_grid(grid, overrides)
    if quantize not in (None, "int8"):
        raise KDEngineError(f"--quantize: unknown mode '{quantize}'; choose int8")
    for name, value in (("latency-runs", latency_runs), ("throughput-batch", throughput_batch),
                        ("calibration-images", calibration_images)):
        if value < 1:
            raise KDEngineError(f"--{name}: must be at least 1, got {value}")
    require_export_extra("kdengine sweep (which exports and times each student in onnxruntime)")
    base = load_recipe(recipe, overrides=overrides)
    if base.run.seeds:
        raise KDEngineError(f"{base.source}: run.seeds: a sweep trains each point with one seed (run.seed); "
                            "drop run.seeds")
    base, replaced = _teacher_of(base, teacher_from, teacher_stage)
    points = grid_points(axes)
    point_recipes(base, axes, points)  # every point validated: nothing is written before this
    root = _new_sweep_folder(Path(output_dir) if output_dir is not None else base.run.output_dir, base.run.name)
    monitor, higher_is_better = monitored_metric(base)
    command = ["kdengine", "sweep", base.source, *[f"--grid={g}" for g in grid], *[f"--set={o}" for o in overrides]]
    command += [f"--{flag}={value}" for flag, value in (("output-dir", output_dir), ("quantize", quantize),
                                                       ("teacher-from", teacher_from), ("teacher-stage", teacher_stage))
                if value is not None]
    state = SweepResult(
        name=base.run.name, sweep_dir=str(root), command=shlex.join(map(str, command)),
        git_revision=git_revision(Path(base.source).parent if Path(base.source).is_file() else Path.cwd()),
        source=base.source, recipe=base.to_dict(), overrides=list(overrides),
        grid=[SweepAxis(key=axis.key, values=list(axis.values)) for axis in axes], monitor=monitor,
        higher_is_better=higher_is_better,
        measure=SweepMeasure(quantize=quantize, latency_runs=latency_runs, throughput_batch=throughput_batch,
                             calibration_images=calibration_images, threads=torch.get_num_threads()),
        teacher_note=_teacher_note(base, points[0].label, teacher_from, teacher_stage, replaced),
        points=[SweepPoint(label=p.label, overrides=list(p.overrides), values=p.values, run_dir=f"points/{p.label}")
                for p in points],
    )
    return _run_points(state, root, progress)


def resume_sweep(sweep_dir: str | Path, *, progress: bool = True) -> SweepResult:
    """Continue a killed sweep in its folder: finished points are kept as they are."""
    root = Path(sweep_dir)
    record = root / "sweep.json"
    if not record.is_file():
        raise KDEngineError(f"{root}: not a sweep folder (no sweep.json)")
    try:
        state = SweepResult.load(record)
    except ValueError as exc:  # invalid JSON, or a record of another shape
        raise KDEngineError(f"{record}: unreadable sweep record ({exc.__class__.__name__})") from None
    if state.complete:
        raise KDEngineError(f"{root}: this sweep already finished; nothing to resume")
    require_export_extra("kdengine sweep (which exports and times each student in onnxruntime)")
    state.sweep_dir = str(root)
    return _run_points(state, root, progress)


def _run_points(state: SweepResult, root: Path, progress: bool) -> SweepResult:
    base = load_recipe(state.recipe)
    base._source = state.source
    base = with_shared_cache(base, root)
    recipes = [with_grid_values(base, point.overrides) for point in state.points]
    state.save(root)
    write_sweep_markdown(state, root)
    taught: tuple[Path | None, StageResult] | None = None  # what the later points are taught by
    for point, recipe in zip(state.points, recipes):
        if taught is not None and taught[0] is not None:
            recipe = with_teacher_checkpoint(recipe, taught[0])
        results = _train_point(state, root, point, recipe, taught[1] if taught else None, progress)
        if point.status != "done":
            _measure_point(state, root, point, results)
            point.status = "done"
        if taught is None:
            taught = _teacher_for_later_points(recipe, results)
            first = results.stage("teacher")
            state.teacher = SweepTeacher(model=first.model, params=first.params, origin=first.origin,
                                         metric=first.test_best.get(state.monitor), metrics=dict(first.test_best),
                                         checkpoint=str(taught[0]) if taught[0] is not None else first.checkpoint)
        state.save(root)
        write_sweep_markdown(state, root)
        if progress:
            latency = ", ".join(f"{kind} {ms:.3f} ms" for kind, ms in point.latency_ms.items())
            console.print(f"sweep: {point.label}: {state.monitor} {format_value(point.metric)} (test), "
                          f"{format_params(point.params)} params, CPU latency {latency}")
    state.complete = True
    plot_sweep(state, root / "sweep.png")
    state.save(root)
    write_sweep_markdown(state, root)
    return state


def _train_point(state: SweepResult, root: Path, point: SweepPoint, recipe: Recipe,
                 teacher: StageResult | None, progress: bool) -> Results:
    """The point's finished run: kept from before, resumed where it was interrupted, or new."""
    run_dir = root / point.run_dir
    results_file = run_dir / "results.json"
    if point.status == "done" or (results_file.is_file() and Results.load(results_file).complete):
        return Results.load(results_file)
    point.status = "running"
    state.save(root)
    if (run_dir / "recipe.json").is_file():
        return api.resume(run_dir, progress=progress)  # the engine's own: finished stages are kept
    if run_dir.is_dir():
        try:
            run_dir.rmdir()  # left empty by a kill before the run wrote its recipe.json
        except OSError:
            raise KDEngineError(f"{run_dir}: not a run folder, and not empty; move it away to run the point "
                                "again") from None
    return run_one(recipe, recipe.run.seed, progress=progress, output_dir=run_dir.parent, folder_name=run_dir.name,
                   shared_teacher=teacher)


def _teacher_for_later_points(recipe: Recipe, first: Results) -> tuple[Path | None, StageResult]:
    """The first point's teacher, for the later points: the weights it trained (None when it was
    given: the later points' recipes name the same one), and its record, reported by the later
    runs instead of scoring the same weights again."""
    if recipe.teacher.trains:
        weights, record = shared_teacher(first)
        return weights, record.model_copy(update={"shared_from_seed": None})
    return None, first.stage("teacher").model_copy(update={"history": [], "seconds": 0.0})


def _measure_point(state: SweepResult, root: Path, point: SweepPoint, results: Results) -> None:
    """The point's numbers: its students' metrics from the run, and its distilled student exported
    to ONNX, timed on the CPU (and quantised to int8, scored and timed)."""
    measure = state.measure
    run_dir = root / point.run_dir
    report = export_run(run_dir, "onnx", stage="distilled", quantize=measure.quantize,
                        throughput_batch=measure.throughput_batch, latency_runs=measure.latency_runs,
                        calibration_images=measure.calibration_images)
    measure.threads = torch.get_num_threads()  # the onnxruntime sessions use as many
    distilled, scratch = results.stage("distilled"), results.stage("scratch")
    point.params = distilled.params
    point.metrics = dict(distilled.test_best)
    point.metric = point.metrics.get(state.monitor)
    point.scratch_metric = scratch.test_best.get(state.monitor) if scratch is not None else None
    point.onnx = os.path.relpath(report.path, root)
    if report.int8 is not None:  # fp32 and int8 timed the same way, one after the other
        point.latency_ms = {"fp32": report.int8.fp32.latency.batch_1_ms, "int8": report.int8.int8.latency.batch_1_ms}
        point.int8_metrics = dict(report.int8.int8.metrics)
        point.int8_metric = point.int8_metrics.get(state.monitor)
    else:
        point.latency_ms = {"fp32": report.exported_latency_ms}


def with_shared_cache(recipe: Recipe, root: Path) -> Recipe:
    """With ``teacher.cache = true``, every point reads the sweep's one ``teacher-cache/`` (a
    recipe's own ``teacher.cache_dir`` is kept: it is one folder already)."""
    if not recipe.teacher.cache or recipe.teacher.cache_dir is not None:
        return recipe
    teacher = recipe.teacher.model_copy(update={"cache_dir": root.resolve() / "teacher-cache"})
    updated = recipe.model_copy(update={"teacher": teacher})
    updated._source = recipe.source
    return updated


def _teacher_of(recipe: Recipe, teacher_from, teacher_stage: str | None) -> tuple[Recipe, str | None]:
    """The recipe with the teacher that ``--teacher-from`` / ``--teacher-stage`` give, and the
    sentence saying that its model replaced the recipe's, if it did."""
    if teacher_stage is not None:
        if teacher_from is None:
            raise KDEngineError("--teacher-stage names a stage of the run that --teacher-from RUN_DIR gives")
        return teacher_from_stage(recipe, teacher_from, teacher_stage)
    if teacher_from is None:
        return recipe, None
    recipe = teacher_from_run(recipe, teacher_from)
    # Absolute, so that a resumed sweep finds the weights from any working directory.
    return with_teacher_checkpoint(recipe, Path(recipe.teacher.checkpoint).resolve()), None


def _teacher_note(recipe: Recipe, first: str, teacher_from, teacher_stage: str | None, replaced: str | None) -> str:
    if teacher_stage is not None:
        note = f"The teacher is stage '{teacher_stage}' of {teacher_from} (its best weights), loaded by every point."
    elif teacher_from is not None:
        note = f"The teacher is the one {teacher_from} trained (its best weights), loaded by every point."
    elif recipe.teacher.checkpoint is not None:
        note = f"The teacher is loaded from {recipe.teacher.checkpoint} by every point."
    elif recipe.teacher.train is False:
        note = "The teacher is used as its factory delivers it (not trained), the same model in every point."
    else:
        note = f"The teacher is trained once, in point {first}; the later points load its best weights."
    if replaced:
        note += " " + replaced
    if recipe.teacher.cache:
        where = recipe.teacher.cache_dir or "teacher-cache/"
        note += f" Its outputs are cached once, in {where}, and read by every point."
    return note


def _new_sweep_folder(parent: Path, name: str) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KDEngineError(f"--output-dir: cannot create '{parent}': {exc.strerror or exc}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = parent / (f"{name}-{stamp}-sweep" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise KDEngineError(f"--output-dir: could not find a free sweep folder name in '{parent}'")


def git_revision(folder: Path) -> str | None:
    """The git commit checked out in ``folder`` (``-dirty`` with uncommitted changes to tracked
    files), or None outside a git checkout or without git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    if revision and git("status", "--porcelain", "--untracked-files=no"):
        revision += "-dirty"
    return revision
