"""The small-GPU path in one short script: fp16 (with its gradient scaler) and bf16 distillation,
the teacher inline and cached, and the memory budget at 2 and 4 GiB, in one table::

    python benchmarks/gpu_check.py                          # one GPU, under 5 minutes
    python benchmarks/gpu_check.py --device cpu             # fp32 and bf16 only
    python benchmarks/gpu_check.py --device cpu --smoke     # seconds: tiny sizes, 3 of the rows

A ResNet-18 teacher (CIFAR stem) is trained once, in fp32 for 5 epochs (``--smoke``: left at its
initial weights); every row then
distils a MobileNetV2 1.0 student (CIFAR stem) from that checkpoint on digits at 32x32 (1280
train images), batch 128, for 3 epochs, the teacher run inline or from its output cache. The budget
rows train with ``train.max_memory`` at batch 512, in fp16 on a GPU and bf16 on a CPU. Per row: images/s (batch / median time
between optimizer steps after the first), the peak memory over the training steps (the device
allocator's on a GPU, the process's resident set on a CPU, reset after the first step so that
set-up, cache building and the budget's measurements are left out), the micro-batch the budget
chose, the steps the gradient scaler skipped (fp16 overflow) and top-1 on test with the
val-best weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stagemeter import busy_processes, git_revision, machine, watch_stage  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    image_size: int
    train_size: int
    val_size: int
    test_size: int
    batch: int
    #: The batch of the memory-budget rows: large enough that 2 GiB binds on a GPU.
    budget_batch: int
    epochs: int
    teacher_epochs: int
    max_steps: int | None
    width_mult: float


FULL = Sizes(image_size=32, train_size=1280, val_size=200, test_size=300, batch=128, budget_batch=512, epochs=3,
             teacher_epochs=5,
             max_steps=None, width_mult=1.0)
#: Seconds on a laptop CPU: 8x8 images, a few steps, a narrow student.
SMOKE = Sizes(image_size=8, train_size=64, val_size=32, test_size=32, batch=16, budget_batch=16, epochs=1,
              teacher_epochs=1,
              max_steps=2, width_mult=0.25)

BUDGETS = ("2GiB", "4GiB")


def recipe(sizes: Sizes, precision: str, *, teacher: Path | None = None, cache: bool = False,
           max_memory: str | None = None) -> dict:
    """A row's recipe; without ``teacher`` (a checkpoint), the run that trains the teacher (and a
    one-step student nobody looks at)."""
    batch = sizes.budget_batch if max_memory else sizes.batch
    train = {"epochs": sizes.epochs if teacher else 1, "batch_size": batch, "eval_batch_size": 256, "baseline": False,
             "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "mixed_precision": precision,
             "max_steps_per_epoch": sizes.max_steps if teacher else 1, "max_memory": max_memory}
    spec = {"name": "torchvision", "params": {"model": "resnet18", "cifar_stem": True}, "cache": cache}
    if teacher is not None:
        spec["checkpoint"] = str(teacher)
    else:
        spec["train"] = {"epochs": sizes.teacher_epochs, "max_steps_per_epoch": sizes.max_steps}
    return {
        "run": {"name": "gpu-check", "seed": 0},
        "data": {"name": "digits", "params": {"image_size": sizes.image_size, "train_size": sizes.train_size,
                                              "val_size": sizes.val_size, "test_size": sizes.test_size}},
        "teacher": spec,
        "student": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": sizes.width_mult,
                                                       "cifar_stem": True}},
        "train": {k: v for k, v in train.items() if v is not None},
        "loss": [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
                 {"name": "cross_entropy", "weight": 0.1}],
        "metric": [{"name": "top1"}],
    }


def make_teacher(sizes: Sizes, smoke: bool, workdir: Path) -> Path:
    """The teacher's checkpoint: trained (a run of its own), or in a smoke test its initial weights."""
    import kdengine
    from kdengine import load_recipe
    from kdengine.io.weights import save_weights
    from kdengine.plugins.catalog import get_catalog
    from kdengine.train.context import open_dataset

    if not smoke:
        first = kdengine.run(recipe(sizes, "no"), progress=False, output_dir=workdir)
        return Path(first.run_dir) / "checkpoints" / "teacher" / "best.safetensors"
    plan = load_recipe(recipe(sizes, "no"))
    _, info = open_dataset(plan)
    path = workdir / "teacher.safetensors"
    save_weights(get_catalog().get("teacher", plan.teacher.name)(plan.teacher.params).build(info), path)
    return path


def results_only(run_dir, results, provider, models) -> None:
    """The run's results.json without the report's figures: they are not what is measured here."""
    results.save(Path(run_dir) / "results.json")


def check(device: str, smoke: bool, workdir: Path) -> list[dict]:
    """Make the teacher, then train every row; returns one dict per row."""
    import warnings

    import kdengine
    from kdengine.train import run as engine
    from kdengine.train.precision import PrecisionWarning

    warnings.simplefilter("ignore", PrecisionWarning)
    engine.finish_run_report = results_only
    # Libraries' objects live as long as the process: Accelerate's free_memory() between stages
    # then collects only what the runs made (seconds per run otherwise, in a smoke test).
    gc.freeze()
    sizes = SMOKE if smoke else FULL
    precisions = ["bf16", "fp16"] if device == "cuda" else ["no", "bf16"]
    teacher = make_teacher(sizes, smoke, workdir)
    plans = [(p, cache, None) for p in reversed(precisions) for cache in (False, True)]
    plans += [(precisions[-1], False, budget) for budget in BUDGETS]
    if smoke:  # each precision, each teacher source and the budget once
        plans = [(precisions[0], False, None), (precisions[-1], True, None), (precisions[-1], False, BUDGETS[0])]
    measured: list[dict] = []
    watch_stage("distilled", measured)
    rows = []
    for precision, cache, budget in plans:
        started = time.perf_counter()
        results = kdengine.run(recipe(sizes, precision, teacher=teacher, cache=cache, max_memory=budget),
                               progress=False, output_dir=workdir)
        stage, meter = results.stage("distilled"), measured[-1]
        rows.append({"precision": "fp32" if precision == "no" else precision,
                     "teacher": "cached" if cache else "inline", "max_memory": budget or "-",
                     "micro_batch": stage.micro_batch, "batch": meter["batch"],
                     "images_per_s": meter["batch"] / statistics.median(meter["step_seconds"])
                     if meter["step_seconds"] else None,
                     "peak_mib": meter["peak_bytes"] / 2**20 if meter["peak_bytes"] else None,
                     # only fp16 has a gradient scaler: elsewhere there is nothing to count, not zero
                     "scaler_skipped": stage.scaler_skipped if precision == "fp16" else None, "top1_test": stage.test_best["top1"],
                     "run_seconds": time.perf_counter() - started, "device": meter["device"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| precision | teacher | max_memory | batch | micro-batch | images/s | peak MiB | scaler skips | top1 test |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{r['images_per_s']:.0f}" if r["images_per_s"] else "-"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] else "-"
        lines.append(f"| {r['precision']} | {r['teacher']} | {r['max_memory']} | {r['batch']} | "
                     f"{r['micro_batch'] or r['batch']} | "
                     f"{speed} | {peak} | {'-' if r['scaler_skipped'] is None else r['scaler_skipped']} | "
                     f"{r['top1_test']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one epoch of two steps: seconds")
    parser.add_argument("--json", type=Path, help="also write the rows, the machine and the command here")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # Accelerate's switch: the CPU even where a GPU is present
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no GPU here: use --device cpu (fp32 and bf16)")
    before = busy_processes()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdengine-gpu-check-") as workdir:
        rows = check(args.device, args.smoke, Path(workdir))
    seconds = time.perf_counter() - started
    device = torch.cuda.get_device_name() if args.device == "cuda" else machine()
    text = table(rows)
    print(f"{device}: {seconds:.0f} s\n\n{text}")
    if args.json is not None:
        report = {"revision": git_revision(), "command": " ".join(["python", "benchmarks/gpu_check.py"]
                                                                  + (argv if argv is not None else sys.argv[1:])),
                  "machine": machine(), "device": device, "running_before": before,
                  "running_after": busy_processes(), "seconds": seconds, "rows": rows, "table": text}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
