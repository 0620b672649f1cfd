"""The training step's waits for the device: the engine's step (a fused optimizer that skips a
failed update on the device, checks read once per ``PROBLEM_READ_STEPS`` steps) beside the step
it replaced (the same optimizer unfused, so every step reads its finite checks on the host)::

    python benchmarks/step_syncs.py [--precision bf16] [--steps 60] [--batch 64] [--json PATH]

A torchvision MobileNetV2 1.0 (CIFAR stem) on random 32x32 images, 10 classes, cross-entropy,
Adam, fp32 (``--precision bf16`` for bf16 autocast), through :func:`kdengine.train.step.train_step`
exactly as the epoch loop calls it, on the device Accelerate picks (a GPU where there is one). The two steps alternate in blocks of ten, so that a busy
machine slows both alike; per step: the median time between optimizer steps after the first
ten, and the host reads of tensor values counted during the timed steps (``item``, ``tolist``,
``bool``, ``float``, ``int``: each one waits for the device; those of torch's unfused optimizers,
of step counts kept on the host, are left out). On a CPU nothing runs ahead of the
host, so the time shows the fused kernel's cost or gain alone; on a GPU the reads are the stalls.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stagemeter import busy_processes, write_report  # noqa: E402

from kdengine.recipe import TrainSpec  # noqa: E402
from kdengine.recipe.optimizers import AdamSpec, ConstantSchedule  # noqa: E402
from kdengine.train.accelerator import make_accelerator  # noqa: E402
from kdengine.train.optim import Schedule, build_optimizer  # noqa: E402
from kdengine.train.step import PROBLEM_READ_STEPS, read_deferred, train_step  # noqa: E402

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def counted_reads(counts: dict):
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(original):
        def read(self, *args, **kwargs):
            # torch's unfused optimizers read their step counts, which stay on the host: no wait
            if not sys._getframe(1).f_globals.get("__name__", "").startswith("torch.optim"):
                counts["reads"] += 1
            return original(self, *args, **kwargs)
        return read

    for name, original in saved.items():
        setattr(torch.Tensor, name, counting(original))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


class Objective(nn.Module):
    def __init__(self):
        super().__init__()
        from torchvision.models import mobilenet_v2

        torch.manual_seed(0)
        self.student = mobilenet_v2(num_classes=10)
        self.student.features[0][0].stride = (1, 1)  # the CIFAR stem: 32x32 inputs keep their size

    def forward(self, inputs, targets, teacher_out=None, teacher_features=None):
        output = self.student(inputs)
        return output, [nn.functional.cross_entropy(output, targets)]


class Arm:
    """One way of stepping: its model, optimizer and the step times and reads it measured."""

    def __init__(self, name: str, fuse: bool, args, accelerator):
        self.name, self.accelerator, self.precision = name, accelerator, args.precision
        objective = Objective().to(accelerator.device)
        optimizer = build_optimizer(objective, AdamSpec(lr=1e-3), fuse=fuse)
        self.schedule = Schedule(optimizer, ConstantSchedule(), epochs=1, steps_per_epoch=args.steps)
        self.objective, self.optimizer = accelerator.prepare(objective, optimizer)
        self.spec = TrainSpec(epochs=1, batch_size=args.batch, mixed_precision=args.precision)
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(args.batch, 3, 32, 32, generator=generator).to(accelerator.device)
        self.targets = torch.randint(0, 10, (args.batch,), generator=generator).to(accelerator.device)
        self.seconds, self.reads, self.steps, self.pending = [], 0, 0, []

    def step(self, timed: bool) -> None:
        counts = {"reads": 0}
        started = time.perf_counter()
        with counted_reads(counts):
            done = train_step(self.accelerator, self.objective, self.optimizer, self.schedule, self.spec, [1.0],
                              ["cross_entropy"], self.inputs, self.targets, lambda x, rows: (None, {}), None)
            if done.flags is not None:
                self.pending.append((self.steps, done))
                if len(self.pending) >= PROBLEM_READ_STEPS:
                    assert read_deferred(self.pending) == []
            elif done.known is not None:
                raise RuntimeError(done.known)
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        self.steps += 1
        if timed:
            self.seconds.append(time.perf_counter() - started)
            self.reads += counts["reads"]

    def row(self) -> dict:
        timed = len(self.seconds)
        return {"step": self.name, "precision": self.precision, "timed_steps": timed,
                "median_ms": 1000 * statistics.median(self.seconds), "host_reads_per_step": self.reads / timed}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per arm")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "step-syncs.json")
    args = parser.parse_args(argv)
    running_before = busy_processes()
    accelerator = make_accelerator(args.precision)
    arms = [Arm("deferred (fused, engine default)", True, args, accelerator),
            Arm("eager (unfused, read every step)", False, args, accelerator)]
    for arm in arms:  # warm-up: the first steps allocate, and the fused optimizer's first is eager
        for _ in range(10):
            arm.step(timed=False)
    for _ in range(max(1, args.steps // 10)):
        for arm in arms:
            for _ in range(10):
                arm.step(timed=True)
    rows = [arm.row() for arm in arms]
    rows[0]["time_ratio_to_eager"] = rows[0]["median_ms"] / rows[1]["median_ms"]
    lines = ["| step | precision | median ms | host reads per step |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['precision']} | {r['median_ms']:.1f} | {r['host_reads_per_step']:.2f} |"
              for r in rows]
    lines.append(f"\ndeferred / eager median time: {rows[0]['time_ratio_to_eager']:.3f} "
                 f"(device {accelerator.device}, batch {args.batch}, {rows[0]['timed_steps']} timed steps each)")
    write_report(args.json, rows, "\n".join(lines), running_before)
    return rows


if __name__ == "__main__":
    main()
