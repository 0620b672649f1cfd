"""train.compile: the distilled student's training step with and without torch.compile, each in
a fresh process (so no compiled graph is shared)::

    python benchmarks/compile_step.py [--steps 20] [--batch 64] [--json PATH]

The student is torchvision's MobileNetV2 1.0 at 32x32 (CIFAR stem), distilled from a small
teacher (MobileNetV2 0.25, trained for one step; it is compiled too when the student is) on
digits, SGD, fp32, batch ``--batch``, ``--steps`` steps. The step time is the median time between
optimizer steps after the first ``--warmup`` (the first compiled steps compile the graphs, which
takes minutes on a small CPU: reported apart, as the first step's and the first evaluation's
time, on 100 val images). The table is printed and written as JSON (default: beside this script)
with the git revision, the command, the machine and what else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stagemeter import busy_processes, watch_stage, write_report  # noqa: E402


def recipe(compiled: bool, batch: int, steps: int) -> dict:
    return {
        "run": {"name": "bench-compile", "seed": 0},
        "data": {"name": "digits", "params": {"image_size": 32, "train_size": max(batch * steps, 200),
                                              "val_size": 100, "test_size": 100}},
        "teacher": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True},
                    "train": {"epochs": 1, "max_steps_per_epoch": 1, "compile": False}},
        "student": {"name": "torchvision", "params": {"model": "mobilenet_v2", "cifar_stem": True}},
        "train": {"epochs": 1, "batch_size": batch, "eval_batch_size": 100, "baseline": False,
                  "max_steps_per_epoch": steps, "optimizer": {"name": "sgd", "lr": 0.05}, "compile": compiled},
        "loss": [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
                 {"name": "cross_entropy", "weight": 0.1}],
        "metric": [{"name": "top1"}],
    }


def worker(compiled: bool, batch: int, steps: int, out: Path) -> None:
    import kdengine
    from kdengine.train import run as engine
    from kdengine.train import stage

    rows: list[dict] = []
    watch_stage("distilled", rows)
    watched, running, first = engine.train_stage, {}, []

    def named(ctx, plan, *args, **kwargs):
        running["stage"] = plan.name
        return watched(ctx, plan, *args, **kwargs)

    step = stage.train_step

    def timed_step(*args, **kwargs):
        start = time.perf_counter()
        done = step(*args, **kwargs)
        if running.get("stage") == "distilled" and not first:  # with compile: the graphs compile here
            first.append(time.perf_counter() - start)
        return done

    engine.train_stage, stage.train_step = named, timed_step
    results = kdengine.run(recipe(compiled, batch, steps), progress=False, output_dir=out.parent)
    rows[0]["first_step_seconds"] = first[0]
    rows[0]["eval_seconds"] = results.stage("distilled").history[-1].eval_seconds
    out.write_text(json.dumps(rows[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="steps between optimizer steps left out")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path, default=HERE / "compile_step.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker == "on", args.batch, args.steps, args.out)
        return

    before = busy_processes()
    workdir = Path(tempfile.mkdtemp(prefix="kdengine-bench-compile-"))
    rows = []
    for mode in ("off", "on"):
        out = workdir / f"{mode}.json"
        # A fresh Inductor cache: the first step compiles from nothing, as on a new machine.
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(workdir / f"inductor-{mode}")}
        subprocess.run([sys.executable, __file__, "--worker", mode, "--out", str(out),
                        "--batch", str(args.batch), "--steps", str(args.steps)], check=True, env=env)
        row = json.loads(out.read_text())
        kept = row["step_seconds"][args.warmup:]
        rows.append({"compile": mode, "device": row["device"], "first_step_seconds": row["first_step_seconds"],
                     "first_eval_seconds": row["eval_seconds"], "step_seconds": statistics.median(kept),
                     "steps_timed": len(kept)})
    off = rows[0]
    lines = [f"MobileNetV2 1.0 at 32x32 distilled from MobileNetV2 0.25, batch {args.batch}, fp32, median of "
             f"{rows[0]['steps_timed']} steps, on {rows[0]['device']}", "",
             "| train.compile | first step s | first evaluation s | step s | speed-up |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['compile']} | {row['first_step_seconds']:.1f} | {row['first_eval_seconds']:.1f} | "
                     f"{row['step_seconds']:.3f} | {off['step_seconds'] / row['step_seconds']:.2f}x |")
    write_report(args.json, rows, "\n".join(lines), before)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
