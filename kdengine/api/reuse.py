"""A teacher trained once, used again: by a later run (``kdengine run RECIPE --teacher-from
RUN_DIR``), by the seeds of a multi-seed run (one teacher, trained with the first seed, unless
``teacher.per_seed = true``) and by the points of a sweep (the first point's teacher, or any stage
of a finished run: ``--teacher-stage``). Either way the best weights become ``teacher.checkpoint``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kdengine.errors import KDEngineError
from kdengine.plugins.components import PRETRAINED_PARAMS
from kdengine.recipe import ComponentSpec, Recipe, load_recipe
from kdengine.recipe.stages import StagePlan, plan_stages
from kdengine.io.results import Results, StageResult
from kdengine.train.models import describe
from kdengine.train.setup import StageLosses

#: Where a finished run keeps the teacher it trained (chosen on val).
TEACHER_WEIGHTS = Path("checkpoints") / "teacher" / "best.safetensors"


def with_teacher_checkpoint(recipe: Recipe, checkpoint: Path) -> Recipe:
    """The recipe with ``teacher.checkpoint`` set: the teacher is loaded, not trained."""
    teacher = recipe.teacher.model_copy(update={"checkpoint": Path(checkpoint), "freeze_backbone_epochs": 0})
    updated = recipe.model_copy(update={"teacher": teacher})
    updated._source = recipe.source
    return updated


def architecture(spec: dict) -> dict:
    """A teacher table without what only chooses its initial weights (``pretrained``, ...): a
    checkpoint replaces those weights, so they need not match."""
    params = {k: v for k, v in (spec.get("params") or {}).items() if k not in PRETRAINED_PARAMS}
    return {"name": spec.get("name"), "params": params}


def teacher_from_run(recipe: Recipe, run_dir: str | Path) -> Recipe:
    """The recipe with the teacher that ``run_dir`` trained as its ``teacher.checkpoint``; a clear
    error when that folder holds no such teacher, or one of another architecture."""
    run_dir = Path(run_dir)
    where = f"--teacher-from {run_dir}"
    results = _finished_run(recipe, run_dir, where)
    teacher = results.stage("teacher")
    if teacher is None:
        raise KDEngineError(f"{where}: the run has no teacher stage")
    if not teacher.trained:
        how = (f"it was loaded from {teacher.checkpoint}; give that file as teacher.checkpoint"
               if teacher.checkpoint else "it was used as its factory delivers it (teacher.train = false)")
        raise KDEngineError(f"{where}: that run did not train its teacher: {how}")
    weights = run_dir / TEACHER_WEIGHTS
    if not weights.is_file():
        raise KDEngineError(f"{where}: the teacher's weights are missing: {weights}")
    recorded = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8")).get("teacher", {})
    ours = recipe.to_dict()["teacher"]
    if architecture(recorded) != architecture(ours):
        theirs = describe(ComponentSpec(**architecture(recorded)))
        raise KDEngineError(f"{where}: its teacher is {theirs}, this recipe's teacher is "
                            f"{describe(ComponentSpec(**architecture(ours)))}: the weights would not fit")
    return with_teacher_checkpoint(recipe, weights)


def _finished_run(recipe: Recipe, run_dir: Path, where: str) -> Results:
    """The results of the finished run in ``run_dir``, whose weights are to teach ``recipe``."""
    if recipe.teacher.checkpoint is not None:
        raise KDEngineError(f"{recipe.source}: teacher.checkpoint: give either teacher.checkpoint or "
                            f"--teacher-from, not both")
    if (run_dir / "summary.json").is_file():
        raise KDEngineError(f"{where}: a multi-seed run folder; give the folder of one seed's run "
                            f"(seed-<n>, whose teacher stage was trained)")
    if not (run_dir / "recipe.json").is_file() or not (run_dir / "results.json").is_file():
        raise KDEngineError(f"{where}: not a run folder (no recipe.json and results.json)")
    results = Results.load(run_dir / "results.json")
    if not results.complete:
        raise KDEngineError(f"{where}: the run has not finished (kdengine run --resume {run_dir} finishes it)")
    return results


def _find_stage(plans: list[StagePlan], name: str) -> StagePlan | None:
    """A stage by its name, or ``gen<N>``: a chain's generation N (``gen1`` is its teacher)."""
    found = next((plan for plan in plans if plan.name == name), None)
    number = re.fullmatch(r"gen(\d+)", name)
    if found is None and number:
        found = next((plan for plan in plans if plan.generation == int(number.group(1))), None)
    return found


def teacher_from_stage(recipe: Recipe, run_dir: str | Path, stage: str) -> tuple[Recipe, str | None]:
    """The recipe taught by one stage of a finished run (a progressive chain's generation: its
    name, or ``gen<N>``): that stage's best weights become ``teacher.checkpoint``, and the model
    they fit, as that run's ``recipe.json`` names it for the stage, becomes the teacher.

    The recipe's own ``[teacher]`` table keeps its settings (cache, precision); its model is
    either that same architecture, or replaced by the stage's, which is allowed only when no loss
    term taps the teacher's layers: those layer names belong to the recipe's teacher. Returns the
    recipe and, when the model was replaced, a sentence that says so."""
    run_dir = Path(run_dir)
    where = f"--teacher-from {run_dir} --teacher-stage {stage}"
    results = _finished_run(recipe, run_dir, where)
    theirs = load_recipe(run_dir / "recipe.json")
    plans = plan_stages(theirs)
    plan = _find_stage(plans, stage)
    if plan is None:
        known = ", ".join(p.name if p.generation is None else f"{p.name} (gen{p.generation})" for p in plans)
        raise KDEngineError(f"{where}: that run has no such stage; its stages: {known}")
    weights = run_dir / "checkpoints" / plan.name / "best.safetensors"
    if results.stage(plan.name) is None or not results.stage(plan.name).trained or not weights.is_file():
        raise KDEngineError(f"{where}: that run did not train stage '{plan.name}' (no {weights})")
    model = architecture(plan.spec.model_dump(mode="json"))
    ours = architecture(recipe.to_dict()["teacher"])
    note = None
    if model != ours:
        taps = StageLosses.of(recipe, taught=True).teacher_paths
        if taps:
            raise KDEngineError(
                f"{where}: the loss terms tap the teacher's layers ({', '.join(taps)}), named for this recipe's "
                f"teacher {describe(ComponentSpec(**ours))}, but stage '{plan.name}' is "
                f"{describe(ComponentSpec(**model))}: make that model the recipe's [teacher], or tap no teacher layer")
        note = (f"The recipe's teacher {describe(ComponentSpec(**ours))} is replaced by stage '{plan.name}' of "
                f"{run_dir}: {describe(ComponentSpec(**model))}.")
        spec = recipe.teacher.model_copy(update={"name": model["name"], "params": model["params"]})
        replaced = recipe.model_copy(update={"teacher": spec})
        try:  # the stage's model must be one that the catalog knows as a teacher, with valid params
            checked = load_recipe(replaced.to_dict())
        except KDEngineError as exc:
            raise KDEngineError(f"{where}: stage '{plan.name}' ({describe(ComponentSpec(**model))}) cannot "
                                f"teach: {exc}") from None
        checked._source = recipe.source
        recipe = checked
    return with_teacher_checkpoint(recipe, weights.resolve()), note


def shares_teacher(recipe: Recipe) -> bool:
    """Whether the seeds of a multi-seed run share one teacher trained with the first seed."""
    return recipe.teacher.trains and not recipe.teacher.per_seed


def shared_teacher(first: Results) -> tuple[Path, StageResult]:
    """The teacher the first seed's run trained: its weights, and its record as the later seeds
    report it (the first seed's numbers, marked as shared and not trained in their runs)."""
    weights = (Path(first.run_dir) / TEACHER_WEIGHTS).resolve()
    record = first.stage("teacher").model_copy(update={
        "trained": False, "shared_from_seed": first.seed, "history": [], "seconds": 0.0, "checkpoint": str(weights)})
    return weights, record


def scored_teacher(first: Results) -> StageResult:
    """A checkpoint teacher's record as the later seeds of a multi-seed run report it. Its weights
    are one file and the splits are data parameters, not the run's seed, so its scores are the
    same in every seed's run: the first seed scores it (on a full benchmark test split that is the
    largest evaluation of the run) and the others take that record, marked as shared."""
    return first.stage("teacher").model_copy(update={"shared_from_seed": first.seed})


def teacher_note(recipe: Recipe, seeds: list[int]) -> str:
    """One sentence under a multi-seed table: where each seed's teacher came from."""
    listed = ", ".join(map(str, seeds))
    if recipe.teacher.checkpoint is not None:
        scored = f", scored once, with seed {seeds[0]}" if len(seeds) > 1 else ""
        return f"One teacher, loaded from {recipe.teacher.checkpoint}, shared by seeds {listed}{scored}."
    if recipe.teacher.train is False:
        return "The teacher is used as its factory delivers it (not trained), built with each run's seed."
    if not shares_teacher(recipe):
        return "One teacher per seed."
    if len(seeds) == 1:
        return f"One teacher, trained with seed {seeds[0]}."
    return f"One teacher, trained with seed {seeds[0]}, shared by seeds {listed}."
