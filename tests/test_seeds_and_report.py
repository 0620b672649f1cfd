"""Multi-seed statistics and the reports (markdown, self-contained HTML, kdengine report)."""

from __future__ import annotations

import re
import statistics

import pytest

import kdengine
from kdengine.cli import main
from kdengine.io.results import EpochRecord, Results, StageResult
from kdengine.reporting.summary import SeedSummary, Spread, summarise


def fake_results(seed: int, scratch: float, distilled: float) -> Results:
    def stage(name, value, params):
        # val at the best and last epochs; test (scored once) lower, so that a table showing val
        # where test belongs is caught.
        return StageResult(stage=name, model="m", params=params, best={"top1": value, "top5": 1.0},
                           last={"top1": value - 0.01, "top5": 1.0}, best_epoch=2,
                           test_best={"top1": value - 0.05, "top5": 1.0}, test_last={"top1": value - 0.06, "top5": 1.0},
                           history=[EpochRecord(epoch=1, losses={"total": 1.0}, metrics={"top1": value})])
    return Results(name="x", run_dir=f"/runs/seed-{seed}", seed=seed, monitor="top1",
                   stages=[stage("teacher", 0.9, 1000), stage("scratch", scratch, 100), stage("distilled", distilled, 100)])


def test_spread_is_mean_and_sample_std():
    spread = Spread.of([0.5, 0.6, 0.7])
    assert spread.mean == pytest.approx(0.6)
    assert spread.std == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))
    assert str(spread) == "0.6000 ± 0.1000"


def test_summary_over_seeds_keeps_best_and_last_apart():
    runs = [fake_results(0, 0.5, 0.6), fake_results(1, 0.6, 0.7), fake_results(2, 0.7, 0.8)]
    summary = summarise(runs, "/runs", [0, 1, 2])
    distilled = summary.stage("distilled")
    assert distilled.best["top1"].mean == pytest.approx(0.7)
    assert distilled.last["top1"].mean == pytest.approx(0.69)
    table = kdengine.table(summary)
    assert distilled.test_best["top1"].mean == pytest.approx(0.65)
    assert distilled.test_last["top1"].mean == pytest.approx(0.64)
    header = table.splitlines()[0]
    assert header.index("top1 test (val-best)") < header.index("top1 test (last)") < header.index("top1 val (best)")
    assert "0.6500 ± 0.1000" in table and "0.6400 ± 0.1000" in table and "0.7000 ± 0.1000" in table
    assert "10.0x" in table and "chosen by top1 on the val split" in table


def test_multi_seed_run_writes_summary(tiny_recipe, tmp_path, capsys):
    import json

    tiny_recipe["train"]["baseline"] = False
    recipe_file = tmp_path / "tiny.json"
    recipe_file.write_text(json.dumps(tiny_recipe))
    # Through the command line: the summary table is printed, then the folder.
    assert main(["run", str(recipe_file), "--seeds", "0,1", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "±" in out and "Run folder:" in out
    summary = SeedSummary.model_validate_json(next(tmp_path.glob("*/summary.json")).read_text())
    root = tmp_path / summary.run_dir.split("/")[-1]
    assert (root / "seed-0" / "results.json").is_file() and (root / "seed-1" / "results.json").is_file()
    assert (root / "summary.json").is_file() and (root / "summary.html").is_file()
    values = [Results.load(root / f"seed-{s}" / "results.json").stage("distilled").best["top1"] for s in (0, 1)]
    assert summary.stage("distilled").best["top1"].values == values


def test_html_report_is_self_contained(tmp_path):
    results = fake_results(0, 0.5, 0.6)
    from kdengine.reporting.report import write_report

    write_report(results, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "<table>" in page and "student (distilled)" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert "closing 25.0% of the teacher-scratch gap" in (tmp_path / "results.md").read_text()


def test_report_command_rebuilds_and_compares(tmp_path, capsys):
    for seed in (0, 1):
        folder = tmp_path / f"run{seed}"
        folder.mkdir()
        fake_results(seed, 0.5, 0.6 + seed / 10).save(folder / "results.json")
    assert main(["report", str(tmp_path / "run0")]) == 0
    assert (tmp_path / "run0" / "report.html").is_file()
    assert main(["report", str(tmp_path / "run0"), str(tmp_path / "run1")]) == 0
    out = capsys.readouterr().out
    assert out.count("student (distilled)") >= 2 and "0.6500" in out
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_gain_sentence_does_not_claim_a_gap_when_the_teacher_is_worse():
    from kdengine.reporting.tables import distillation_gain

    results = fake_results(0, 0.95, 0.93)  # teacher 0.9 < scratch 0.95
    text = distillation_gain(results)
    assert "-0.0200" in text and "no gap to close" in text and "closing" not in text
