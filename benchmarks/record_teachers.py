"""Package teacher candidates, each trained once by its own run, into one JSON record and print
their table: the choice among them is made on val (the highest best-val monitor wins), and test
is shown beside it, never used to choose::

    python benchmarks/record_teachers.py --entry swinir=RUN_DIR --entry cnn32=RUN_DIR ... \\
        --out benchmarks/results/sr-set5-teachers.json --what "..." --command "..." --load "..."

Each run's ``teacher`` stage is read from its ``results.json`` and ``metrics.jsonl`` (the val
curve); ``--time-file LABEL=FILE`` adds GNU ``time -v`` output of that run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stagemeter import git_revision  # noqa: E402
from record_seeds import read_time_file  # noqa: E402


def teacher_row(run_dir: Path, monitor: str) -> dict:
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    stage = next(s for s in results["stages"] if s["stage"] == "teacher")
    curve = [(row["epoch"], round(row["metrics"][monitor], 4))
             for row in map(json.loads, (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
             if row["stage"] == "teacher" and monitor in row.get("metrics", {})]
    return {"run": run_dir.name, "model": stage["model"], "params": stage["params"], "best_epoch": stage["best_epoch"],
            "epochs": len(stage["history"]), "stage_seconds": round(stage["seconds"], 1),
            "val_best": stage["best"], "test_best": stage["test_best"], "test_last": stage["test_last"],
            "val_curve": curve}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entry", action="append", required=True, metavar="LABEL=RUN_DIR")
    parser.add_argument("--time-file", action="append", default=[], metavar="LABEL=FILE")
    parser.add_argument("--monitor", default="psnr_y")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--what", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--load", default="not recorded")
    args = parser.parse_args(argv)
    times = dict(item.split("=", 1) for item in args.time_file)
    rows = {}
    for item in args.entry:
        label, _, folder = item.partition("=")
        if not (Path(folder) / "results.json").is_file():
            print(f"{folder}: not a finished run (no results.json)", file=sys.stderr)
            return 2
        rows[label] = teacher_row(Path(folder), args.monitor)
        if label in times:
            rows[label].update(read_time_file(Path(times[label])))
    chosen = max(rows, key=lambda label: rows[label]["val_best"][args.monitor])
    record = {"what": args.what, "command": args.command, "git_revision": git_revision(),
              "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
              "load": args.load, "monitor": args.monitor, "chosen_on_val": chosen, "teachers": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    m = args.monitor
    print(f"| teacher | params | epochs | val {m} (best) | test {m} (val-best) | minutes |\n|---|---|---|---|---|---|")
    for label, row in rows.items():
        mark = " (chosen on val)" if label == chosen else ""
        print(f"| {label}: {row['model']}{mark} | {row['params'] / 1e6:.3f}M | {row['epochs']} | "
              f"{row['val_best'][m]:.2f} | {row['test_best'][m]:.2f} | {row['stage_seconds'] / 60:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
