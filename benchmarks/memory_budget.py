"""train.max_memory: the micro-batch chosen for several budgets, and the peak memory measured while
the distilled student then trains (each budget in a fresh process)::

    python benchmarks/memory_budget.py [--budgets none,3GiB,2GiB,1.5GiB] [--images 512]

ResNet18 teacher (CIFAR stem) inline, MobileNetV2 1.0 student (CIFAR stem), 32x32 images, batch 128,
one epoch. The peak is the stage's resident-set high-water mark, reset when the stage starts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stagemeter import machine, measure_stages, read_stages  # noqa: E402


def recipe(images: int, budget: str | None) -> dict:
    train = {"epochs": 1, "batch_size": 128, "eval_batch_size": 64, "baseline": False,
             "optimizer": {"name": "sgd", "lr": 0.05}}
    if budget:
        train["max_memory"] = budget
    return {
        "run": {"name": "bench-memory", "seed": 0},
        "data": {"name": "digits", "params": {"image_size": 32, "train_size": images, "val_size": 64, "test_size": 64}},
        "teacher": {"name": "torchvision", "params": {"model": "resnet18", "cifar_stem": True},
                    "train": {"epochs": 1, "max_steps_per_epoch": 1, "max_memory": None}},
        "student": {"name": "torchvision", "params": {"model": "mobilenet_v2", "cifar_stem": True}},
        "train": train,
        "loss": [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
                 {"name": "cross_entropy", "weight": 0.1}],
        "metric": [{"name": "top1"}],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="none,3GiB,2GiB,1.5GiB")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        measure_stages(Path(args.out))
        import kdengine

        budget = None if args.worker == "none" else args.worker
        results = kdengine.run(recipe(args.images, budget), progress=False, output_dir=Path(args.out).parent)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"stage": "micro", "micro_batch": results.stage("distilled").micro_batch}) + "\n")
        return

    workdir = Path(tempfile.mkdtemp(prefix="kdengine-bench-memory-"))
    print(f"machine: {machine()}")
    print(f"ResNet18 -> MobileNetV2 1.0 (CIFAR stems), 32x32, batch 128, {args.images} images, 1 epoch\n")
    print("| budget  | micro-batch | accumulation | stage peak MiB | within budget | epoch s |")
    print("|---------|-------------|--------------|----------------|---------------|---------|")
    for budget in args.budgets.split(","):
        out = workdir / f"{budget}.jsonl"
        subprocess.run([sys.executable, __file__, "--worker", budget, "--out", str(out), "--images", str(args.images)],
                       check=True)
        rows = read_stages(out)
        stage = rows["distilled"]
        micro = rows["micro"]["micro_batch"]
        peak = stage["peak_bytes"]
        fits = "-" if budget == "none" else ("yes" if peak <= _bytes(budget) else "NO")
        steps = 1 if micro is None else -(-128 // micro)
        print(f"| {budget:<7} | {micro or 128:>11} | {steps:>12} | {peak / 2**20:>14.0f} | {fits:>13} | "
              f"{stage['epoch_seconds'][0]:>7.1f} |")


def _bytes(text: str) -> int:
    from kdengine.recipe.units import parse_size

    return parse_size(text)


if __name__ == "__main__":
    main()
