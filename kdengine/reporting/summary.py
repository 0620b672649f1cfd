"""Summarising a run repeated over several seeds: mean +- std of every stage's metrics,
at the best epoch (as most published KD results) and at the last epoch, side by side."""

from __future__ import annotations

import statistics

from pydantic import BaseModel, Field

from kdengine.reporting.results import Results


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
