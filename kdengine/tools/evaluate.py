"""``kdengine evaluate RUN_DIR``: score a finished run's stages again, on the split and with the
weights asked for, with the recipe's metrics (or others named on the command line).

Nothing is trained and nothing in the run folder is changed: the same data, the same models
built from the same recipe, the weights read from ``checkpoints/<stage>/{best,last}.safetensors``
(a teacher given as a checkpoint from that file; one used as its factory delivers it is
built again, the same under the run's seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kdengine.errors import KDEngineError, located
from kdengine.plugins.catalog import get_catalog
from kdengine.recipe import ComponentSpec, Recipe, load_recipe
from kdengine.recipe.stages import plan_stages
from kdengine.io.results import Results
from kdengine.reporting.tables import format_params, format_value, markdown_table, stage_label
from kdengine.train.accelerator import make_accelerator
from kdengine.train.context import eval_loader, open_dataset, split_of
from kdengine.train.evaluate import Scorer, build_metrics
from kdengine.train.models import count_parameters, describe, ready_to_teach
from kdengine.teacher.given import given_teacher


@dataclass
class StageScore:
    stage: str
    model: str
    params: int
    metrics: dict[str, float]


@dataclass
class RunScores:
    run_dir: str
    split: str
    weights: str
    stages: list[StageScore] = field(default_factory=list)

    def table(self) -> str:
        columns = list(dict.fromkeys(k for s in self.stages for k in s.metrics))
        header = ["stage", "model"] + [f"{k} ({self.split}, {self.weights} weights)" for k in columns] + ["params"]
        rows = [[stage_label(s.stage), s.model] + [format_value(s.metrics.get(k)) for k in columns]
                + [format_params(s.params)] for s in self.stages]
        return markdown_table(header, rows)


def finished_run(run_dir: Path) -> tuple[Recipe, Results]:
    """The recipe and results of a run folder whose run finished; a clear error otherwise."""
    recipe_file, results_file = run_dir / "recipe.json", run_dir / "results.json"
    if not recipe_file.is_file() or not results_file.is_file():
        raise KDEngineError(f"{run_dir}: not a run folder (no recipe.json and results.json)")
    results = Results.load(results_file)
    if not results.complete:
        raise KDEngineError(f"{run_dir}: the run has not finished (kdengine run --resume {run_dir} finishes it)")
    return load_recipe(recipe_file), results


def evaluate_run(run_dir: str | Path, *, split: str = "test", weights: str = "best",
                 stages: list[str] | None = None, metrics: list[str] | None = None) -> RunScores:
    """Score the run's stages (all, or those named) on ``split`` with their ``weights``."""
    run_dir = Path(run_dir)
    if split not in ("val", "test"):
        raise KDEngineError(f"--split: '{split}' is not one of val, test")
    if weights not in ("best", "last"):
        raise KDEngineError(f"--weights: '{weights}' is not one of best, last")
    recipe, results = finished_run(run_dir)
    if metrics:
        catalog = get_catalog()
        for name in metrics:
            with located(str(run_dir), "--metric"):
                catalog.get("metric", name)
        recipe = recipe.model_copy(update={"metric": [ComponentSpec(name=name) for name in metrics]})
        recipe._source = str(run_dir / "recipe.json")
    plans = {plan.name: plan for plan in plan_stages(recipe)}
    finished = [s.stage for s in results.stages]
    wanted = stages or finished
    for name in wanted:
        if name not in finished:
            raise KDEngineError(f"{run_dir}: --stage: no stage '{name}'; this run has: {', '.join(finished)}")

    accelerator = make_accelerator(recipe.train.mixed_precision)
    provider, info = open_dataset(recipe)
    data = split_of(recipe, provider, split)
    with located(recipe.source, "metric"):
        scorer = Scorer(accelerator, provider, build_metrics(recipe, info))
    catalog = get_catalog()
    scores = RunScores(str(run_dir), split, weights)
    for name in wanted:
        plan = plans[name]
        accelerator.use_precision(plan.train.mixed_precision)  # scored as in training
        factory = catalog.get(plan.role, plan.spec.name)(plan.spec.params)
        if name == "teacher" and not recipe.teacher.trains:
            model = given_teacher(recipe, factory, info)
        else:
            model = factory.load(run_dir / "checkpoints" / name / f"{weights}.safetensors", info)
        model = ready_to_teach(model, accelerator, plan.train.channels_last)
        loader = accelerator.prepare_data_loader(eval_loader(provider, data, plan.train))
        values = scorer(model, loader, plan.train.channels_last)
        scores.stages.append(StageScore(name, describe(plan.spec), count_parameters(model), values))
    return scores
