"""Scaling: distilled-student epoch time and peak memory as the training set grows 1x, 2x, 4x, 8x.

ResNet18 teacher (CIFAR stem, inline) -> MobileNetV2 0.5x student (CIFAR stem), 32x32 images,
batch 64, two epochs per size, each size in a fresh process. Epoch time is the second epoch's
(evaluation of a fixed 64-image split included); peak memory is the distilled stage's resident-set
high-water mark, reset when the stage starts::

    python benchmarks/scaling.py [--base 192] [--factors 1,2,4,8]

Linear time means a constant time per image; flat memory means the peak does not grow with the
data (it is set by the batch, the models and the optimizer state).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stagemeter import machine, measure_stages, read_stages  # noqa: E402


def recipe(images: int, channels_last: bool) -> dict:
    return {
        "run": {"name": "bench-scaling", "seed": 0},
        "data": {"name": "digits", "params": {"image_size": 32, "train_size": images, "val_size": 64, "test_size": 64,
                                              "augment": {"crop_padding": 4, "flip": True}}},
        "teacher": {"name": "torchvision", "params": {"model": "resnet18", "cifar_stem": True},
                    "train": {"epochs": 1, "max_steps_per_epoch": 1}},
        "student": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.5, "cifar_stem": True}},
        "train": {"epochs": 2, "batch_size": 64, "eval_batch_size": 64, "baseline": False,
                  "channels_last": channels_last, "optimizer": {"name": "sgd", "lr": 0.05}},
        "loss": [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
                 {"name": "cross_entropy", "weight": 0.1}],
        "metric": [{"name": "top1"}],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=192, help="training images at 1x (8x must be <= 1700)")
    parser.add_argument("--factors", default="1,2,4,8")
    parser.add_argument("--contiguous", action="store_true", help="no channels_last")
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
    print(f"machine: {machine()}")
    print(f"ResNet18 -> MobileNetV2 0.5x (CIFAR stems, inline teacher), 32x32, batch 64, "
          f"channels_last {not args.contiguous}\n")
    print("| size | images | epoch s | ms / image | vs 1x per image | peak MiB | vs 1x peak |")
    print("|------|--------|---------|------------|-----------------|----------|------------|")
    first = None
    for factor in factors:
        images = args.base * factor
        out = workdir / f"{images}.jsonl"
        command = [sys.executable, __file__, "--worker", str(images), "--out", str(out)]
        if args.contiguous:
            command.append("--contiguous")
        subprocess.run(command, check=True)
        stage = read_stages(out)["distilled"]
        seconds = stage["epoch_seconds"][-1]
        per_image = seconds / images
        peak = stage["peak_bytes"]
        first = first or (per_image, peak)
        print(f"| {factor}x | {images:>6} | {seconds:>7.2f} | {per_image * 1e3:>10.2f} | "
              f"{per_image / first[0]:>15.2f} | {peak / 2**20:>8.0f} | {(peak / first[1] - 1) * 100:>+9.1f}% |")


if __name__ == "__main__":
    main()
