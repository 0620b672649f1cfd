"""Turn a finished multi-seed run (``kdengine run RECIPE --seeds 0,1,2``) into the committed JSON
record that backs a table of ``benchmarks/README.md``, and print that table.

The record keeps what a reader needs to trust the table: the command, the git revision, the
machine, what else was running, the wall and CPU time and peak memory (from ``/usr/bin/time -v``
output, when given), and for every stage the test score at the val-best and at the last weights
and the val score that chose the epoch, as mean, standard deviation and the per-seed values::

    /usr/bin/time -v kdengine run recipes/sr.toml --seeds 0,1,2 2> time.txt
    python benchmarks/record_seeds.py runs/sr-<stamp>-seeds --out benchmarks/results/sr-seeds.json \\
        --what "recipes/sr.toml over seeds 0, 1, 2" --command "kdengine run recipes/sr.toml --seeds 0,1,2" \\
        --time-file time.txt --load "nothing else running"

Several labelled runs go into one record (``--run LABEL=DIR``, repeatable), for comparisons such
as one loss per run; each run's stages are then named ``LABEL/stage``. Several unlabelled folders
of disjoint seeds (the same recipe run in parallel processes, ``--seeds 0,1`` and ``--seeds 2``)
are merged into one multi-seed record.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stagemeter import git_revision  # noqa: E402


def read_time_file(path: Path) -> dict:
    """Wall seconds, user CPU seconds and peak RSS from GNU time's verbose output."""
    text = path.read_text(encoding="utf-8", errors="replace")
    found = {}
    if m := re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text):
        hours, minutes, seconds = int(m.group(1) or 0), int(m.group(2)), float(m.group(3))
        found["wall_seconds"] = round(hours * 3600 + minutes * 60 + seconds, 1)
    if m := re.search(r"User time \(seconds\): ([\d.]+)", text):
        found["user_cpu_seconds"] = float(m.group(1))
    if m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", text):
        found["peak_rss_kib"] = int(m.group(1))
    return found


def merged_summary(seeds_dirs: list[Path]) -> tuple[dict, list[Path]]:
    """The summary of one multi-seed run, or of several runs in parallel processes over disjoint
    seeds (``--seeds 0,1`` and ``--seeds 2``), recomputed by kdengine from their seeds' results."""
    summaries = [json.loads((d / "summary.json").read_text(encoding="utf-8")) for d in seeds_dirs]
    folders = [f for d, summary in zip(seeds_dirs, summaries) for f in _seed_folders(d, summary)]
    if len(seeds_dirs) == 1:
        return summaries[0], folders
    from kdengine.io.results import Results
    from kdengine.reporting.summary import summarise

    seeds = [seed for summary in summaries for seed in summary["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the runs share seeds ({seeds}); merge runs of disjoint seeds only")
    merged = summarise([Results.load(f / "results.json") for f in folders], " + ".join(map(str, seeds_dirs)), seeds)
    merged.teacher_note = " ".join(dict.fromkeys(s.get("teacher_note") or "" for s in summaries)).strip()
    return json.loads(merged.model_dump_json()), folders


def stage_records(seeds_dirs: list[Path], label: str | None) -> dict:
    """Every stage of a multi-seed run: test at val-best and last, val at its best, best epochs."""
    summary, folders = merged_summary(seeds_dirs)
    per_seed = [json.loads((run / "results.json").read_text(encoding="utf-8")) for run in folders]
    records = {}
    for stage in summary["stages"]:
        name = stage["stage"] if label is None else f"{label}/{stage['stage']}"
        epochs = [next((s.get("best_epoch") for s in run["stages"] if s["stage"] == stage["stage"]), None)
                  for run in per_seed]
        records[name] = {
            "model": stage["model"], "params": stage["params"], "origin": stage.get("origin"),
            "test_best": _compact(stage.get("test_best")), "test_last": _compact(stage.get("test_last")),
            "val_best": _compact(stage.get("best")), "best_epochs": epochs,
        }
    return {"seeds": summary["seeds"], "monitor": summary.get("monitor"), "stages": records,
            "teacher_note": summary.get("teacher_note")}


def _seed_folders(seeds_dir: Path, summary: dict) -> list[Path]:
    # the summary names absolute folders; the record must survive the run folder moving
    return [seeds_dir / Path(run).name for run in summary["runs"]]


#: An absolute path up to a run folder's checkpoints (the teacher notes name the file a teacher was
#: loaded from); the record keeps the run folder's name and drops where it lay on this machine.
_FOLDER_BEFORE_RUN = re.compile(r"(?<![\w>])/(?:[^\s/,]+/)*?([^\s/,]+)/checkpoints/")


def without_machine_folders(note: str) -> str:
    """``note`` with every run folder's absolute path shortened to ``<runs>/NAME``: a committed
    record must not say where this machine keeps its runs."""
    return _FOLDER_BEFORE_RUN.sub(r"<runs>/\1/checkpoints/", note)


def _compact(metrics: dict | None) -> dict:
    if not metrics:
        return {}
    return {name: {"mean": round(v["mean"], 4), "std": round(v["std"], 4),
                   "values": [round(x, 4) for x in v["values"]]} for name, v in metrics.items()}


def markdown_table(stages: dict, metric: str) -> str:
    lines = [f"| stage | params | test {metric} (val-best) | test {metric} (last) | val {metric} (best) | best epochs |",
             "|---|---|---|---|---|---|"]
    for name, stage in stages.items():
        cells = [_cell(stage[key].get(metric)) for key in ("test_best", "test_last", "val_best")]
        epochs = " / ".join("-" if e is None else str(e) for e in stage["best_epochs"])
        lines.append(f"| {name} ({stage['model']}) | {stage['params'] / 1e6:.2f}M | " + " | ".join(cells) + f" | {epochs} |")
    return "\n".join(lines)


def _cell(value: dict | None) -> str:
    return "-" if value is None else f"{value['mean']:.4f} ± {value['std']:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seeds_dir", nargs="*", type=Path,
                        help="a multi-seed run folder (<name>-<stamp>-seeds); several, of disjoint seeds, are merged")
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=DIR",
                        help="a labelled multi-seed run folder (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    parser.add_argument("--what", required=True)
    parser.add_argument("--command", required=True, help="the command(s) that produced the run(s)")
    parser.add_argument("--time-file", type=Path, help="GNU time -v output of the run")
    parser.add_argument("--load", default="not recorded", help="what else was running")
    parser.add_argument("--metric", help="the metric of the printed table (default: the run's monitor)")
    parser.add_argument("--threads", default="one intra-op thread (OMP_NUM_THREADS=1)")
    args = parser.parse_args(argv)
    runs = [(None, args.seeds_dir)] if args.seeds_dir else []
    for item in args.run:
        label, _, folder = item.partition("=")
        runs.append((label, [Path(folder)]))
    if not runs:
        parser.error("give a seeds folder or --run LABEL=DIR")
    stages, seeds, monitor, notes = {}, None, None, []
    for label, folders in runs:
        for folder in folders:
            if not (folder / "summary.json").is_file():
                print(f"{folder}: not a finished multi-seed run (no summary.json)", file=sys.stderr)
                return 2
        found = stage_records(folders, label)
        stages.update(found["stages"])
        seeds, monitor = found["seeds"], monitor or found["monitor"]
        if found["teacher_note"]:
            notes.append(found["teacher_note"])
    record = {
        "what": args.what, "command": args.command, "git_revision": git_revision(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads visible, Python "
                   f"{platform.python_version()}, torch {torch.__version__}, {args.threads}",
        "load": args.load, **(read_time_file(args.time_file) if args.time_file else {}),
        "seeds": seeds, "monitor": monitor, "teacher": without_machine_folders(" ".join(dict.fromkeys(notes))),
        "stages": stages,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(markdown_table(stages, args.metric or monitor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
