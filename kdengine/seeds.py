"""Repeating a run over several seeds and summarising it: mean +- std of every stage's metrics,
at the best epoch (as most published KD results) and at the last epoch, side by side."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from pydantic import BaseModel, Field

from kdengine.checkpoint import atomic_write_text
from kdengine.errors import KDEngineError
from kdengine.recipe import Recipe
from kdengine.results import Results


class Spread(BaseModel):
    mean: float
    std: float
    values: list[float]

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(mean=statistics.fmean(values), std=std, values=values)

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f}"


class StageSummary(BaseModel):
    stage: str
    model: str
    params: int
    best: dict[str, Spread] = Field(default_factory=dict)
    last: dict[str, Spread] = Field(default_factory=dict)


class SeedSummary(BaseModel):
    name: str
    run_dir: str
    seeds: list[int]
    monitor: str
    runs: list[str] = Field(default_factory=list)
    stages: list[StageSummary] = Field(default_factory=list)
    seconds: float = 0.0

    def stage(self, name: str) -> StageSummary | None:
        return next((s for s in self.stages if s.stage == name), None)

    def table(self) -> str:
        from kdengine.report import seed_table

        return seed_table(self)


def summarise(results: list[Results], run_dir: str, seeds: list[int]) -> SeedSummary:
    first = results[0]
    summary = SeedSummary(name=first.name, run_dir=run_dir, seeds=seeds, monitor=first.monitor,
                          runs=[r.run_dir for r in results])
    for stage in first.stages:
        per_seed = [r.stage(stage.stage) for r in results]
        row = StageSummary(stage=stage.stage, model=stage.model, params=stage.params)
        for key in stage.best:
            row.best[key] = Spread.of([s.best[key] for s in per_seed])
            row.last[key] = Spread.of([s.last[key] for s in per_seed])
        summary.stages.append(row)
    summary.seconds = sum(r.seconds for r in results)
    return summary


def run_seeds(recipe: Recipe, seeds: list[int], *, progress: bool = True,
              output_dir: str | Path | None = None) -> SeedSummary:
    from kdengine.engine import run_one
    from kdengine.report import write_seed_report

    if len(set(seeds)) != len(seeds):
        raise KDEngineError(f"{recipe.source}: run.seeds: repeated seeds in {seeds}")
    parent = Path(output_dir) if output_dir is not None else recipe.run.output_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = parent / f"{recipe.run.name}-{stamp}-seeds"
    suffix = 0
    while root.exists():
        suffix += 1
        root = parent / f"{recipe.run.name}-{stamp}-seeds-{suffix}"
    results = [run_one(recipe, seed, progress=progress, output_dir=root, folder_name=f"seed-{seed}")
               for seed in seeds]
    summary = summarise(results, str(root), seeds)
    atomic_write_text(root / "summary.json", summary.model_dump_json(indent=2))
    write_seed_report(summary, root)
    return summary
