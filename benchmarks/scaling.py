"""Scaling: distilled-student epoch time and peak memory as the training set grows 1x, 2x, 4x, 8x.

ResNet18 teacher (CIFAR stem, inline) -> MobileNetV2 0.5x student (CIFAR stem), 32x32 images,
batch 64, each size in a fresh process, ``--repeats`` times in turn (1x, 2x, ..., then again),
the median kept. The epoch measured is the first after at least 24 optimizer steps (the first
steps of a process are slower, and at 1x the second epoch would still be steps 4 to 6). Its
training time (every optimizer step, the data loading and augmentation between them) is what
should grow with the data; it is reported apart from the evaluation of a fixed 64-image split
that the epoch also runs. Peak memory is the distilled stage's resident-set high-water mark, reset when the stage
starts::

    python benchmarks/scaling.py [--base 192] [--factors 1,2,4,8] [--repeats 3] [--json FILE]

Linear time means a constant training time per image; the table's least-squares line through
(images, training seconds) says how much of an epoch is fixed and how much per image. Flat memory
means the peak does not grow with the data (it is set by the batch, the models and the optimizer
state).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stagemeter import machine, measure_stages, read_stages  # noqa: E402


def warm_epochs(images: int, batch: int = 64, warm_steps: int = 24) -> int:
    """Epochs before the measured one: at least ``warm_steps`` optimizer steps. The first steps
    of a process are slower (allocator growth, oneDNN primitives being created), so every size is
    measured after the same number of steps, not after the same number of epochs."""
    return max(1, -(-warm_steps // (images // batch)))


def recipe(images: int, channels_last: bool) -> dict:
    return {
        "run": {"name": "bench-scaling", "seed": 0},
        "data": {"name": "digits", "params": {"image_size": 32, "train_size": images, "val_size": 64, "test_size": 64,
                                              "augment": {"crop_padding": 4, "flip": True}}},
        "teacher": {"name": "torchvision", "params": {"model": "resnet18", "cifar_stem": True},
                    "train": {"epochs": 1, "max_steps_per_epoch": 1}},
        "student": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.5, "cifar_stem": True}},
        "train": {"epochs": warm_epochs(images) + 1, "batch_size": 64, "eval_batch_size": 64, "baseline": False,
                  "channels_last": channels_last, "optimizer": {"name": "sgd", "lr": 0.05}},
        "loss": [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
                 {"name": "cross_entropy", "weight": 0.1}],
        "metric": [{"name": "top1"}],
    }


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = fixed + per_x * x``."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    per_x = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y - per_x * mean_x, per_x


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=192, help="training images at 1x (8x must be <= 1700)")
    parser.add_argument("--factors", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=3, help="processes per size; the median is kept")
    parser.add_argument("--contiguous", action="store_true", help="no channels_last")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        measure_stages(Path(args.out))
        import kdengine

        kdengine.run(recipe(args.worker, not args.contiguous), progress=False, output_dir=Path(args.out).parent)
        return

    workdir = Path(tempfile.mkdtemp(prefix="kdengine-bench-scaling-"))
    factors = [int(f) for f in args.factors.split(",")]
    load_before = load_average()
    measured: dict[int, list[dict]] = {f: [] for f in factors}
    for repeat in range(args.repeats):  # sizes in turn, so a change in the machine's load falls on all
        for factor in factors:
            images = args.base * factor
            out = workdir / f"{images}-{repeat}.jsonl"
            command = [sys.executable, __file__, "--worker", str(images), "--out", str(out)]
            if args.contiguous:
                command.append("--contiguous")
            subprocess.run(command, check=True)
            stage = read_stages(out)["distilled"]
            measured[factor].append({"train_seconds": stage["train_seconds"][-1],
                                     "eval_seconds": stage["eval_seconds"][-1],
                                     "epoch_seconds": stage["epoch_seconds"][-1], "peak_bytes": stage["peak_bytes"]})

    rows = []
    for factor in factors:
        runs = measured[factor]
        rows.append({"factor": factor, "images": args.base * factor,
                     **{key: statistics.median(r[key] for r in runs)
                        for key in ("train_seconds", "eval_seconds", "epoch_seconds", "peak_bytes")}})
    fixed, per_image = line_fit([r["images"] for r in rows], [r["train_seconds"] for r in rows])
    first = rows[0]
    print(f"machine: {machine()}; load average {load_before} before, {load_average()} after")
    print(f"ResNet18 -> MobileNetV2 0.5x (CIFAR stems, inline teacher), 32x32, batch 64, "
          f"channels_last {not args.contiguous}; the epoch after 24 warm-up steps, median of {args.repeats} processes "
          "per size\n")
    print("| size | images | train s | ms / image (train) | vs 1x per image | eval s | epoch s | peak MiB | vs 1x peak |")
    print("|------|--------|---------|--------------------|-----------------|--------|---------|----------|------------|")
    for row in rows:
        ms = row["train_seconds"] / row["images"] * 1e3
        ms_first = first["train_seconds"] / first["images"] * 1e3
        print(f"| {row['factor']}x | {row['images']:>6} | {row['train_seconds']:>7.2f} | {ms:>18.2f} | "
              f"{ms / ms_first:>15.2f} | {row['eval_seconds']:>6.2f} | {row['epoch_seconds']:>7.2f} | "
              f"{row['peak_bytes'] / 2**20:>8.0f} | {(row['peak_bytes'] / first['peak_bytes'] - 1) * 100:>+9.1f}% |")
    print(f"\nleast-squares line: train seconds = {fixed:.2f} + {per_image * 1e3:.2f} ms x images")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "base": args.base, "repeats": args.repeats,
                                         "channels_last": not args.contiguous, "measured": measured, "rows": rows,
                                         "line": {"fixed_seconds": fixed, "seconds_per_image": per_image},
                                         "load_average": {"before": load_before, "after": load_average()}},
                                        indent=1))


if __name__ == "__main__":
    main()
