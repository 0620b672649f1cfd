"""Turn BSDS500 runs, scored on the full test split by ``edges_bsds_eval.py``, into the committed
JSON record behind the BSDS500 table of ``benchmarks/README.md``, and print that table.

Each ``--entry LABEL=RUN_DIR:STAGE`` is one seed of one row (``scratch=runs/a:scratch``,
``soft_bce=runs/b:distilled``, ...); entries with the same label are the seeds of that row, given
as mean, standard deviation and per-seed values. Per entry the record keeps the seed, the epoch
chosen on val, the val score that chose it, the auto loss weights, and the test ODS/OIS/Dice at
the val-best and (where scored) at the last weights, read from the run folder's
``bsds_test_{best,last}_<stage>.json`` (written by ``edges_bsds_eval.py --which best|last
--stages <stage>``). When the val-best epoch is the last epoch the two weights are one file and
one scoring serves both; a mean over fewer seeds than the row has names its seeds::

    python benchmarks/edges_bsds_eval.py RUN --root BSDS500 --thresholds 11 --which best --stages distilled
    python benchmarks/record_bsds.py --entry soft_bce=RUN:distilled ... --teacher teacher=TEACHER_RUN:teacher \\
        --out benchmarks/results/bsds500-kd.json --what "..." --command "..." --load "..."
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stagemeter import git_revision  # noqa: E402
from record_seeds import read_time_file  # noqa: E402

METRICS = ("ods", "ois", "dice")


def scored(run_dir: Path, stage: str, which: str) -> dict | None:
    """The test scores of one stage's weights, from the files edges_bsds_eval.py writes."""
    for path in sorted(run_dir.glob(f"bsds_test_{which}_*.json")):
        if path.name.startswith(f"bsds_test_{which}_nonms_"):
            continue  # scored without the benchmark's NMS
        rows = json.loads(path.read_text(encoding="utf-8"))
        if stage in rows:
            return {k: rows[stage][k] for k in METRICS}
    return None


def entry_record(run_dir: Path, stage: str) -> dict:
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    found = next((s for s in results["stages"] if s["stage"] == stage), None)
    if found is None:
        raise SystemExit(f"{run_dir}: no stage '{stage}' in results.json")
    epochs = len(found.get("history") or [])
    best = scored(run_dir, stage, "best")
    last = scored(run_dir, stage, "last")
    if last is None and found.get("best_epoch") == epochs:
        last = best  # the val-best weights are the last ones
    if best is None and found.get("best_epoch") in (None, epochs):
        best = last
    if best is None:
        raise SystemExit(f"{run_dir}: stage '{stage}' is not scored on test at its val-best weights "
                         "(run edges_bsds_eval.py --which best)")
    return {"run": run_dir.name, "seed": results["seed"], "model": found["model"], "params": found["params"],
            "best_epoch": found.get("best_epoch"), "epochs": epochs,
            "val_best": {k: round(v, 4) for k, v in (found.get("best") or {}).items()},
            "loss_weights": found.get("loss_weights") or {},
            "test_best": {k: round(v, 4) for k, v in best.items()},
            # not every entry's last weights are scored (the test split costs minutes per model)
            "test_last": {k: round(v, 4) for k, v in last.items()} if last is not None else {}}


def spread(entries: list[dict], key: str) -> dict:
    out = {}
    for metric in METRICS:
        values = [e[key][metric] for e in entries if metric in e[key]]
        if values:
            out[metric] = {"mean": round(statistics.fmean(values), 4),
                           "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                           "values": values, "seeds": [e["seed"] for e in entries if metric in e[key]]}
    return out


def markdown_table(rows: dict) -> str:
    lines = ["| row | seeds | val ODS (best) | test ODS (val-best) | test ODS (last) | test OIS (val-best) "
             "| test Dice (val-best) | best epochs |", "|---|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        def cell(key, metric):
            value = row[key].get(metric)
            if value is None:
                return "-"
            if len(value["values"]) == 1:
                return f"{value['mean']:.3f} (seed {value['seeds'][0]})"
            text = f"{value['mean']:.3f} ± {value['std']:.3f}"
            if len(value["values"]) < len(row["entries"]):  # not every seed scored: say which
                text += f" (seeds {', '.join(str(s) for s in value['seeds'])})"
            return text
        epochs = " / ".join(str(e["best_epoch"]) for e in row["entries"])
        lines.append(f"| {label} | {', '.join(str(e['seed']) for e in row['entries'])} | {cell('val_best', 'ods')} | {cell('test_best', 'ods')} | "
                     f"{cell('test_last', 'ods')} | {cell('test_best', 'ois')} | {cell('test_best', 'dice')} | {epochs} |")
    return "\n".join(lines)


def parse_entry(text: str) -> tuple[str, Path, str]:
    label, _, place = text.partition("=")
    folder, _, stage = place.rpartition(":")
    if not label or not folder or not stage:
        raise SystemExit(f"--entry {text}: give LABEL=RUN_DIR:STAGE")
    return label, Path(folder), stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entry", action="append", required=True, metavar="LABEL=RUN_DIR:STAGE")
    parser.add_argument("--teacher", metavar="LABEL=RUN_DIR:STAGE", help="the teacher's row (one run)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    parser.add_argument("--what", required=True)
    parser.add_argument("--command", required=True, help="the commands that produced and scored the runs")
    parser.add_argument("--time-file", type=Path, action="append", default=[], help="GNU time -v output of a run")
    parser.add_argument("--load", default="not recorded", help="what else was running")
    parser.add_argument("--threads", default="one intra-op thread (OMP_NUM_THREADS=1)")
    args = parser.parse_args(argv)
    rows: dict[str, dict] = {}
    for text in ([args.teacher] if args.teacher else []) + args.entry:
        label, folder, stage = parse_entry(text)
        rows.setdefault(label, {"entries": []})["entries"].append(entry_record(folder, stage))
    for row in rows.values():
        for key in ("val_best", "test_best", "test_last"):
            row[key] = spread(row["entries"], key)
    times = [read_time_file(path) for path in args.time_file]
    record = {
        "what": args.what, "command": args.command, "git_revision": git_revision(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads visible, Python "
                   f"{platform.python_version()}, torch {torch.__version__}, {args.threads}",
        "load": args.load, "runs_timed": times, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
