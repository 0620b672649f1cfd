"""What the command line and notebooks call: run, resume, evaluate, cache_teacher.

``run`` trains, fine-tunes or loads the teacher (or takes it as its factory delivers it),
optionally trains the student from scratch as a baseline, then trains the same student distilled
from the frozen teacher; with several seeds it repeats the run once per seed, the seeds sharing
the teacher trained with the first, and summarises them (mean and standard deviation).
"""

from __future__ import annotations

import time
from pathlib import Path

from accelerate.utils import set_seed

from kdengine.errors import KDEngineError
from kdengine.io.atomic import atomic_write_text
from kdengine.plugins.catalog import get_catalog
from kdengine.recipe import Recipe, load_recipe
from kdengine.recipe.stages import plan_stages
from kdengine.reporting.report import write_seed_report
from kdengine.io.results import Results
from kdengine.reporting.summary import SeedSummary, summarise
from kdengine.teacher.cache import TeacherCache
from kdengine.teacher.cached import CachedTeacher, default_cache_root
from kdengine.teacher.given import given_teacher
from kdengine.api.reuse import (scored_teacher, shared_teacher, shares_teacher, teacher_from_run, teacher_note,
                                    with_teacher_checkpoint)
from kdengine.train.accelerator import make_accelerator
from kdengine.train.context import RunContext, open_dataset, split_of
from kdengine.train.models import ready_to_teach
from kdengine.tools.evaluate import RunScores, evaluate_run
from kdengine.train.run import run_one
from kdengine.train.setup import StageSetup
from kdengine.train.transfer import open_transfer

RecipeSource = Recipe | str | Path | dict


def run(recipe: RecipeSource, *, overrides: list[str] | tuple = (), progress: bool = True,
        output_dir: str | Path | None = None, seeds: list[int] | None = None,
        teacher_from: str | Path | None = None) -> Results | SeedSummary:
    """Run a recipe and return its results.

    With several seeds (``seeds=[0, 1, 2]`` or ``run.seeds`` in the recipe) the run is repeated
    once per seed, each in ``<run folder>/seed-<n>/``, and a :class:`SeedSummary` with mean and
    standard deviation of every stage's best and last metrics is returned (and written as
    ``summary.json`` / ``summary.md``). The seeds share one teacher, trained with the first seed,
    unless ``teacher.per_seed = true``.

    ``teacher_from``: a finished run folder whose trained teacher (its best weights) is used as
    ``teacher.checkpoint``, instead of training the teacher again.
    """
    recipe = load_recipe(recipe, overrides=overrides)
    if teacher_from is not None:
        recipe = teacher_from_run(recipe, teacher_from)
    seeds = seeds or recipe.run.seeds
    if not seeds:
        return run_one(recipe, recipe.run.seed, progress=progress,
                       output_dir=Path(output_dir) if output_dir is not None else None)
    return run_seeds(recipe, seeds, progress=progress, output_dir=output_dir)


def run_seeds(recipe: Recipe, seeds: list[int], *, progress: bool = True,
              output_dir: str | Path | None = None) -> SeedSummary:
    if len(set(seeds)) != len(seeds):
        raise KDEngineError(f"{recipe.source}: run.seeds: repeated seeds in {seeds}")
    parent = Path(output_dir) if output_dir is not None else recipe.run.output_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = parent / f"{recipe.run.name}-{stamp}-seeds"
    suffix = 0
    while root.exists():
        suffix += 1
        root = parent / f"{recipe.run.name}-{stamp}-seeds-{suffix}"
    results: list[Results] = []
    # with a shared teacher, the later seeds load the first seed's; a checkpoint teacher is scored once
    later, teacher = recipe, None
    for seed in seeds:
        results.append(run_one(later, seed, progress=progress, output_dir=root, folder_name=f"seed-{seed}",
                               shared_teacher=teacher))
        if teacher is None and shares_teacher(recipe):
            weights, teacher = shared_teacher(results[0])
            later = with_teacher_checkpoint(recipe, weights)
        elif teacher is None and recipe.teacher.checkpoint is not None:
            teacher = scored_teacher(results[0])
    summary = summarise(results, str(root), seeds)
    summary.teacher_note = teacher_note(recipe, seeds)
    atomic_write_text(root / "summary.json", summary.model_dump_json(indent=2))
    write_seed_report(summary, root)
    return summary


def resume(run_dir: str | Path, *, progress: bool = True) -> Results:
    """Continue an interrupted run in its own folder (``kdengine run --resume RUN_DIR``)."""
    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise KDEngineError(f"{run_dir}: not a run folder (no recipe.json)")
    recipe = load_recipe(recipe_file)
    if (run_dir / "results.json").is_file() and Results.load(run_dir / "results.json").complete:
        raise KDEngineError(f"{run_dir}: this run already finished; nothing to resume")
    return run_one(recipe, recipe.run.seed, progress=progress, resume_dir=run_dir)


def evaluate(run_dir: str | Path, *, split: str = "test", weights: str = "best", stages: list[str] | None = None,
             metrics: list[str] | None = None) -> RunScores:
    """Score a finished run's stages again (``kdengine evaluate``): on ``split`` ("test" or "val"),
    with their ``weights`` ("best" or "last"), with the recipe's metrics or those named."""
    return evaluate_run(run_dir, split=split, weights=weights, stages=stages, metrics=metrics)


def cache_teacher(recipe: RecipeSource, *, overrides: list[str] | tuple = (), progress: bool = True,
                  output_dir: str | Path | None = None) -> list[TeacherCache]:
    """Build the teacher-output caches of a recipe whose teacher the run does not train (a
    checkpoint, or ``teacher.train = false``), before any student trains (``kdengine
    cache-teacher``): one per stage taught by the teacher."""
    recipe = load_recipe(recipe, overrides=overrides)
    if recipe.teacher.trains:
        raise KDEngineError(
            f"{recipe.source}: teacher.checkpoint: the teacher is trained in the run, so its cache is built "
            "after it is trained (set teacher.cache = true and run the recipe); cache-teacher needs a trained "
            "teacher (teacher.checkpoint) or one used as delivered (teacher.train = false)"
        )
    seed = recipe.run.seed
    accelerator = make_accelerator(recipe.train.mixed_precision)
    set_seed(seed)
    provider, info = open_dataset(recipe)
    factory = get_catalog().get("teacher", recipe.teacher.name)(recipe.teacher.params)
    given_teacher(recipe, factory, info)  # a bad file or model stops here, before any work
    train_set = split_of(recipe, provider, "train")
    # the transfer rows are in the cache's inputs and key, as the run's taught stages add them
    ctx = RunContext(recipe, seed, accelerator, provider, info, train_set, None, None, None, progress,
                     transfer=open_transfer(recipe, provider, seed))
    root = default_cache_root(recipe, Path(output_dir) if output_dir is not None else Path(recipe.run.output_dir))
    channels_last = recipe.teacher_train().channels_last
    checkpoint = Path(recipe.teacher.checkpoint) if recipe.teacher.checkpoint is not None else None
    source = CachedTeacher(checkpoint, lambda: ready_to_teach(given_teacher(recipe, factory, info), accelerator,
                                                              channels_last), "teacher", recipe.teacher)
    return [source.open(StageSetup.assemble(ctx, plan, taught=True), root)
            for plan in plan_stages(recipe) if plan.teacher == "teacher"]
