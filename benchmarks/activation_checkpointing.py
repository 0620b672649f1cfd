"""train.activation_checkpointing: peak memory and step time of the distilled student with and
without, each in a fresh process (so peaks do not mix)::

    python benchmarks/activation_checkpointing.py [--steps 6] [--batch 128] [--json PATH]

Students at 32x32 (CIFAR stems): torchvision MobileNetV2 1.0 with its 17 feature blocks named in
``train.checkpoint_modules``, and timm ResNet-18 through its own ``set_grad_checkpointing()``.
Each is distilled from a small teacher (MobileNetV2 0.25, trained for one step: its cost is the
same in both columns) on digits, SGD, batch ``--batch``, ``--steps`` steps, fp32. The peak is the
device allocator's on a GPU and the process's resident set on a CPU (as ``train.max_memory``
measures them), over the training steps; step time is the median time between optimizer steps
after the first. "saved activations" is what one training forward pass of the student keeps for
the backward pass (the bytes of its saved tensors, measured apart from the run): the part that
checkpointing shrinks, free of the allocator's and the process's share. The table is printed and written as JSON (default: beside this script) with the
git revision, the command, the machine and what else was running.
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

from _stagemeter import busy_processes, watch_stage, write_report  # noqa: E402

STUDENTS = {
    "mobilenet_v2": ({"name": "torchvision", "params": {"model": "mobilenet_v2", "cifar_stem": True}},
                     [f"features.{i}" for i in range(1, 18)]),
    "resnet18 (timm)": ({"name": "timm", "params": {"model": "resnet18", "cifar_stem": True}}, []),
}


def recipe(student: str, checkpointing: bool, batch: int, steps: int) -> dict:
    spec, modules = STUDENTS[student]
    train = {"epochs": 1, "batch_size": batch, "eval_batch_size": 100, "baseline": False,
             "max_steps_per_epoch": steps, "optimizer": {"name": "sgd", "lr": 0.05},
             "activation_checkpointing": checkpointing, "checkpoint_modules": modules}
    return {
        "run": {"name": "bench-checkpointing", "seed": 0},
        "data": {"name": "digits", "params": {"image_size": 32, "train_size": max(batch * steps, 200),
                                              "val_size": 100, "test_size": 100}},
        "teacher": {"name": "torchvision", "params": {"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True},
                    "train": {"epochs": 1, "max_steps_per_epoch": 1, "activation_checkpointing": False}},
        "student": spec,
        "train": train,
        "loss": [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
                 {"name": "cross_entropy", "weight": 0.1}],
        "metric": [{"name": "top1"}],
    }


def saved_activations(student: str, checkpointing: bool, batch: int) -> int:
    """Bytes of the tensors one training forward pass of the student keeps for its backward pass:
    what checkpointing saves, without the allocator's and the process's noise."""
    import torch

    from kdengine import load_recipe
    from kdengine.plugins.catalog import get_catalog
    from kdengine.train.checkpointing import apply_activation_checkpointing
    from kdengine.train.context import open_dataset

    plan = load_recipe(recipe(student, checkpointing, batch, 1))
    _, info = open_dataset(plan)
    model = get_catalog().get("student", plan.student.name)(plan.student.params).build(info)
    apply_activation_checkpointing(model, plan.train, plan.source, student)
    storages: dict[int, int] = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model.train()(torch.randn(batch, info.in_channels, 32, 32))
    return sum(storages.values())


def worker(student: str, checkpointing: bool, batch: int, steps: int, out: Path) -> None:
    import kdengine

    rows: list[dict] = []
    watch_stage("distilled", rows)
    kdengine.run(recipe(student, checkpointing, batch, steps), progress=False, output_dir=out.parent)
    rows[0]["saved_bytes"] = saved_activations(student, checkpointing, batch)
    out.write_text(json.dumps(rows[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", type=Path, default=HERE / "activation_checkpointing.json")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1] == "on", args.batch, args.steps, args.out)
        return

    before = busy_processes()
    workdir = Path(tempfile.mkdtemp(prefix="kdengine-bench-checkpointing-"))
    rows = []
    for student in STUDENTS:
        for mode in ("off", "on"):
            out = workdir / f"{student.split()[0]}-{mode}.json"
            subprocess.run([sys.executable, __file__, "--worker", student, mode, "--out", str(out),
                            "--batch", str(args.batch), "--steps", str(args.steps)], check=True)
            row = json.loads(out.read_text())
            rows.append({"student": student, "checkpointing": mode, "device": row["device"],
                         "peak_mib": row["peak_bytes"] / 2**20, "saved_mib": row["saved_bytes"] / 2**20,
                         "step_seconds": statistics.median(row["step_seconds"])})
    lines = [f"{len(STUDENTS)} students at 32x32, batch {args.batch}, {args.steps} steps, fp32, on {rows[0]['device']}",
             "", "| student | checkpointing | saved activations MiB | peak MiB | vs off | step s | vs off |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        off = next(r for r in rows if r["student"] == row["student"] and r["checkpointing"] == "off")
        lines.append(f"| {row['student']} | {row['checkpointing']} | {row['saved_mib']:.0f} | {row['peak_mib']:.0f} | "
                     f"{row['peak_mib'] / off['peak_mib']:.2f}x | {row['step_seconds']:.2f} | "
                     f"{row['step_seconds'] / off['step_seconds']:.2f}x |")
    write_report(args.json, rows, "\n".join(lines), before)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
