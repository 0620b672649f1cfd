"""Student epoch time and peak memory: teacher inline vs teacher-output cache vs the student alone.

A ResNet101 teacher with the CIFAR stem (3x3 stem, no max-pool; 42.5M parameters at 10 classes)
and a MobileNetV2 student (CIFAR stem) on 32x32 images, batch 128, Hinton KD (0.9 KL at T = 4 +
0.1 CE), SGD: the paper's classification pair at the paper's image size. Each configuration runs
in a fresh process; each stage's peak memory is its own resident-set high-water mark::

    python benchmarks/teacher_cache.py [--images 768] [--epochs 2] [--precision no|bf16]
        [--channels-last] [--teacher-precision same|no|bf16|auto]

Rows:
- student alone: the student trained on the labels only (no teacher anywhere in the process);
- teacher inline: the distilled student with the frozen teacher run on every batch;
- teacher cache: the distilled student reading the teacher's outputs from the cache, which
  ``kdengine cache-teacher`` built beforehand in its own process (its time is the "build" line).

Epoch time is the median over the epochs after the first (evaluation of a 64-image split
included, the same in every row). The data are scikit-learn's digits upsampled to 32x32 (offline;
one channel instead of CIFAR's three changes only the first convolution).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stagemeter import machine, measure_stages, read_stages  # noqa: E402


def recipe(images: int, epochs: int, precision: str, checkpoint: str, cache: bool, baseline: bool,
           cache_dir: str, channels_last: bool, teacher_precision: str) -> dict:
    return {
        "run": {"name": "bench-cache", "seed": 0},
        "data": {"name": "digits", "params": {"image_size": 32, "train_size": images, "val_size": 64, "test_size": 64,
                                              "augment": {"crop_padding": 4, "flip": True}}},
        "teacher": {"name": "torchvision", "params": {"model": "resnet101", "cifar_stem": True},
                    "checkpoint": checkpoint, "cache": cache, "cache_dir": cache_dir,
                    "precision": teacher_precision},
        "student": {"name": "torchvision", "params": {"model": "mobilenet_v2", "cifar_stem": True}},
        "train": {"epochs": epochs, "batch_size": 128, "eval_batch_size": 64, "baseline": baseline,
                  "mixed_precision": precision, "channels_last": channels_last, "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4}},
        "loss": [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
                 {"name": "cross_entropy", "weight": 0.1}],
        "metric": [{"name": "top1"}],
    }


def worker(args) -> None:
    """One configuration in this process: run the recipe, write per-stage measurements."""
    measure_stages(Path(args.out))
    import kdengine

    spec = json.loads(Path(args.recipe).read_text())
    if args.mode == "build":
        started = time.perf_counter()
        kdengine.cache_teacher(spec, progress=False, output_dir=args.workdir)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"stage": "build", "seconds": time.perf_counter() - started}) + "\n")
        return
    kdengine.run(spec, progress=False, output_dir=args.workdir)


def spawn(mode: str, spec: dict, workdir: Path, out: Path) -> None:
    recipe_file = workdir / f"{mode}.json"
    recipe_file.write_text(json.dumps(spec))
    subprocess.run([sys.executable, __file__, "--worker", mode, "--recipe", str(recipe_file), "--out", str(out),
                    "--workdir", str(workdir)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=768, help="training images (<= 1700)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", default="no", choices=["no", "bf16"], help="the student's (train.mixed_precision)")
    parser.add_argument("--channels-last", action="store_true", help="train.channels_last")
    parser.add_argument("--teacher-precision", default="same", choices=["same", "no", "bf16", "auto"])
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.mode = args.worker
        worker(args)
        return

    import torch

    from kdengine.plugins.catalog import get_catalog
    from kdengine.io.weights import save_weights
    from kdengine.plugins.components import DataInfo

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kdengine-bench-cache-"))
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    teacher = get_catalog().get("teacher", "torchvision")({"model": "resnet101", "cifar_stem": True}).build(
        DataInfo(task="classification", in_channels=1, num_classes=10))
    checkpoint = workdir / "teacher.safetensors"
    save_weights(teacher, checkpoint)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    del teacher
    cache_dir = str(workdir / "cache")
    out = workdir / "measurements.jsonl"
    out.unlink(missing_ok=True)
    common = dict(images=args.images, epochs=args.epochs, precision=args.precision,
                  checkpoint=str(checkpoint), cache_dir=cache_dir, channels_last=args.channels_last,
                  teacher_precision=args.teacher_precision)
    spawn("build", recipe(cache=True, baseline=False, **common), workdir, out)
    build = [json.loads(l) for l in out.read_text().splitlines()][-1]["seconds"]
    spawn("cached", recipe(cache=True, baseline=True, **common), workdir, out)
    cached = read_stages(out)
    out.unlink()
    spawn("inline", recipe(cache=False, baseline=False, **common), workdir, out)
    inline = read_stages(out)

    def epoch_time(row: dict) -> float:
        times = row["epoch_seconds"]
        return statistics.median(times[1:] if len(times) > 1 else times)

    rows = [("student alone", cached["scratch"]), ("teacher inline", inline["distilled"]),
            ("teacher cache", cached["distilled"])]
    alone_m = rows[0][1]["peak_bytes"]
    inline_t = epoch_time(rows[1][1])
    size = sum(f.stat().st_size for f in Path(cache_dir).rglob("*.npy"))
    print(f"machine: {machine()}")
    print(f"teacher: ResNet101 (CIFAR stem, {teacher_params / 1e6:.1f}M params); student: MobileNetV2 1.0 "
          f"(CIFAR stem); {args.images} images 32x32, batch 128, student precision {args.precision}, "
          f"channels_last {args.channels_last}, teacher precision {args.teacher_precision}, {args.epochs} epochs")
    print()
    print(f"| {'configuration':<15} | {'epoch s':>8} | {'img/s':>7} | {'vs inline':>9} | {'peak MiB':>8} | {'vs alone':>8} |")
    print(f"|{'-' * 17}|{'-' * 10}|{'-' * 9}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    for name, row in rows:
        t, m = epoch_time(row), row["peak_bytes"]
        print(f"| {name:<15} | {t:>8.2f} | {args.images / t:>7.1f} | {inline_t / t:>8.2f}x | {m / 2**20:>8.0f} | "
              f"{(m / alone_m - 1) * 100:>+7.1f}% |")
    print()
    print(f"cache build ({args.epochs} epochs, its own process): {build:.1f} s; cache size {size / 2**20:.1f} MiB "
          f"(float16); peak reset per stage: {all(r['peak_reset'] for _, r in rows)}")


if __name__ == "__main__":
    main()
