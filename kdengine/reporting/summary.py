"""Summarising a run repeated over several seeds: mean +- std of every stage's metrics,
at the best epoch (as most published KD results) and at the last epoch, side by side."""

from __future__ import annotations

import statistics

from pydantic import BaseModel, Field

from kdengine.io.results import Results


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
    #: Where the first run's weights came from (see ``StageResult.origin``).
    origin: str = "trained"
    #: The monitor split (val) at each run's best epoch and at its last.
    best: dict[str, Spread] = Field(default_factory=dict)
    last: dict[str, Spread] = Field(default_factory=dict)
    #: The test split with each run's best weights and with its last.
    test_best: dict[str, Spread] = Field(default_factory=dict)
    test_last: dict[str, Spread] = Field(default_factory=dict)


class SeedSummary(BaseModel):
    name: str
    run_dir: str
    seeds: list[int]
    monitor: str
    monitor_split: str = "val"
    runs: list[str] = Field(default_factory=list)
    stages: list[StageSummary] = Field(default_factory=list)
    seconds: float = 0.0
    #: Where the teacher of each seed came from: one teacher trained with the first seed and
    #: shared by all (the default), one per seed (``teacher.per_seed``), a checkpoint, ...
    teacher_note: str = ""

    def stage(self, name: str) -> StageSummary | None:
        return next((s for s in self.stages if s.stage == name), None)


def summarise(results: list[Results], run_dir: str, seeds: list[int]) -> SeedSummary:
    first = results[0]
    summary = SeedSummary(name=first.name, run_dir=run_dir, seeds=seeds, monitor=first.monitor,
                          monitor_split=first.monitor_split, runs=[r.run_dir for r in results])
    for stage in first.stages:
        per_seed = [r.stage(stage.stage) for r in results]
        row = StageSummary(stage=stage.stage, model=stage.model, params=stage.params, origin=stage.origin)
        for field in ("best", "last", "test_best", "test_last"):
            for key in getattr(stage, field):
                getattr(row, field)[key] = Spread.of([getattr(s, field)[key] for s in per_seed])
        summary.stages.append(row)
    summary.seconds = sum(r.seconds for r in results)
    return summary
