"""Copy a finished ``kdengine sweep`` into the committed record behind a table of
``benchmarks/README.md``: its ``sweep.json`` with every point's export record (fp32 and int8:
metric, file size, latency at batch 1 and at the throughput batch) folded in, and its Pareto
figure, with folder paths made relative to the sweep folder, and print the fp32 vs int8 table::

    kdengine sweep recipes/classification.toml --grid student.params.width_mult=1.0,0.75,0.5,0.35 --quantize int8
    python benchmarks/record_sweep.py runs/classification-<stamp>-sweep \\
        --out benchmarks/results/sweep-classification --load "nothing else running"

writes ``sweep-classification.json`` and ``sweep-classification.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def relative(value, root: str):
    """The record with every mention of the sweep folder made relative to it."""
    if isinstance(value, str):
        return value.replace(root + "/", "").replace(root, ".")
    if isinstance(value, list):
        return [relative(v, root) for v in value]
    if isinstance(value, dict):
        return {k: relative(v, root) for k, v in value.items()}
    return value


def int8_table(record: dict) -> str:
    metric = record["monitor"]
    lines = [f"| point | params | {metric} fp32 | {metric} int8 | size fp32 / int8 (MiB) | "
             "batch 1 fp32 / int8 (ms) | batch 32 fp32 / int8 (images/s) |", "|---|---|---|---|---|---|---|"]
    for point in record["points"]:
        export = point.get("export") or {}
        both = export.get("int8")
        if not both:
            continue
        fp32, int8 = both["fp32"], both["int8"]
        rate = [32 * 1000 / m["latency"]["throughput_ms"] for m in (fp32, int8)]
        lines.append(
            f"| {point['label']} | {point['params'] / 1e6:.2f}M | {fp32['metrics'][metric]:.4f} | "
            f"{int8['metrics'][metric]:.4f} | {fp32['file_bytes'] / 2**20:.2f} / {int8['file_bytes'] / 2**20:.2f} | "
            f"{fp32['latency']['batch_1_ms']:.2f} / {int8['latency']['batch_1_ms']:.2f} | {rate[0]:.0f} / {rate[1]:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the record's path without suffix")
    parser.add_argument("--load", default="not recorded", help="what else was running")
    args = parser.parse_args(argv)
    record_file = args.sweep_dir / "sweep.json"
    if not record_file.is_file():
        print(f"{args.sweep_dir}: not a sweep folder (no sweep.json)", file=sys.stderr)
        return 2
    record = json.loads(record_file.read_text(encoding="utf-8"))
    if not record.get("complete"):
        print(f"{args.sweep_dir}: the sweep has not finished (kdengine sweep --resume finishes it)", file=sys.stderr)
        return 2
    for point in record["points"]:
        export = args.sweep_dir / point["run_dir"] / "export" / "onnx" / "export.json"
        if export.is_file():
            point["export"] = json.loads(export.read_text(encoding="utf-8"))
    root = str(args.sweep_dir.resolve())
    record = relative(record, root)
    record["load"] = args.load
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if (args.sweep_dir / "sweep.png").is_file():
        shutil.copyfile(args.sweep_dir / "sweep.png", args.out.with_suffix(".png"))
    print((args.sweep_dir / "sweep.md").read_text(encoding="utf-8"))
    print(int8_table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
