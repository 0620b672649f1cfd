"""A teacher trained once, used again: by a later run (``kdengine run RECIPE --teacher-from
RUN_DIR``) and by the seeds of a multi-seed run (one teacher, trained with the first seed, unless
``teacher.per_seed = true``). Either way the teacher's best weights become ``teacher.checkpoint``.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdengine.errors import KDEngineError
from kdengine.plugins.components import PRETRAINED_PARAMS
from kdengine.recipe import ComponentSpec, Recipe
from kdengine.reporting.results import Results, StageResult
from kdengine.train.models import describe

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
    if recipe.teacher.checkpoint is not None:
        raise KDEngineError(f"{recipe.source}: teacher.checkpoint: give either teacher.checkpoint or "
                            f"--teacher-from, not both")
    if (run_dir / "summary.json").is_file():
        raise KDEngineError(f"{where}: a multi-seed run folder; give the folder of one seed's run "
                            f"(seed-<n>, whose teacher stage was trained)")
    if not (run_dir / "recipe.json").is_file() or not (run_dir / "results.json").is_file():
        raise KDEngineError(f"{where}: not a run folder (no recipe.json and results.json)")
    results = Results.load(run_dir / "results.json")
    teacher = results.stage("teacher")
    if not results.complete:
        raise KDEngineError(f"{where}: the run has not finished (kdengine run --resume {run_dir} finishes it)")
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


def teacher_note(recipe: Recipe, seeds: list[int]) -> str:
    """One sentence under a multi-seed table: where each seed's teacher came from."""
    listed = ", ".join(map(str, seeds))
    if recipe.teacher.checkpoint is not None:
        return f"One teacher, loaded from {recipe.teacher.checkpoint}, shared by seeds {listed}."
    if recipe.teacher.train is False:
        return "The teacher is used as its factory delivers it (not trained), built with each run's seed."
    if not shares_teacher(recipe):
        return "One teacher per seed."
    if len(seeds) == 1:
        return f"One teacher, trained with seed {seeds[0]}."
    return f"One teacher, trained with seed {seeds[0]}, shared by seeds {listed}."
