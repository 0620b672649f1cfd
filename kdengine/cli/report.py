"""``kdengine report RUN_DIR...``: rebuild report.html; several runs side by side."""

from __future__ import annotations

from pathlib import Path

from kdengine.errors import KDEngineError


def add_parser(sub) -> None:
    report = sub.add_parser("report", help="rebuild a run's report; with several runs, compare them in one table")
    report.add_argument("run_dirs", nargs="+", help="run folders (each with results.json)")


def main(args) -> int:
    from kdengine.reporting.report import write_report
    from kdengine.io.results import Results
    from kdengine.reporting.tables import comparison_table, results_table

    runs = []
    for run_dir in map(Path, args.run_dirs):
        path = run_dir / "results.json"
        if not path.is_file():
            raise KDEngineError(f"{run_dir}: not a run folder (no results.json)")
        try:
            results = Results.load(path)
        except Exception as exc:
            raise KDEngineError(f"{path}: unreadable results ({exc})") from None
        samples = run_dir / "samples.png"
        write_report(results, run_dir, samples if samples.is_file() else None)
        runs.append(results)
        print(f"wrote {run_dir / 'report.html'}")
    print(comparison_table(runs) if len(runs) > 1 else results_table(runs[0]))
    return 0
