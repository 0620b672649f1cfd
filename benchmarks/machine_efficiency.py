"""How close the student's training step comes to this CPU: achieved FLOP/s against measured
matmul peaks, and where the rest of the time goes.

The student is the one ``recipes/classification.toml`` trains (MobileNetV2 0.5x, CIFAR stem, 32 px),
built through the recipe's own factory; the step is a plain one (forward, cross-entropy,
backward, AdamW step): the kernels the engine's step runs, without its bookkeeping. FLOPs come from ``torch.utils.flop_counter`` (forward + backward of one step), the peaks
from large square matmuls in fp32 and bf16 at the same thread count. Each variant (fp32 / bf16
autocast, contiguous / channels_last, eager / ``torch.compile``) is timed side by side in one run,
median of ``--steps`` steps after warm-up; the fastest is profiled with ``torch.profiler`` and its
top operators by self CPU time are listed::

    OMP_NUM_THREADS=2 python benchmarks/machine_efficiency.py --out benchmarks/results/machine-efficiency.json

Not part of the test suite: it measures time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from kdengine import load_recipe
from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.components import DataInfo
from kdengine.tools.measure import measure_ms

ROOT = Path(__file__).resolve().parent.parent


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul: the practical peak of this CPU for ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    return 2 * size ** 3 / (measure_ms(lambda: a @ b, repeats, warmup=2) / 1000)


def build_student(recipe_path: Path) -> tuple[torch.nn.Module, int]:
    recipe = load_recipe(recipe_path)
    factory = get_catalog().get("student", recipe.student.name)(recipe.student.params)
    info = DataInfo(num_classes=10, in_channels=3, task="classification")
    return factory.build(info), recipe.train.batch_size


def make_step(model: torch.nn.Module, bf16: bool, channels_last: bool, compiled: bool, batch: int):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compiled else model
    inputs = torch.randn(batch, 3, 32, 32).to(memory_format=fmt)
    labels = torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = F.cross_entropy(forward(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def step_flops(model: torch.nn.Module, batch: int) -> int:
    inputs = torch.randn(batch, 3, 32, 32)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(inputs), torch.zeros(batch, dtype=torch.long)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def top_operators(step, rows: int = 12) -> list[dict]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in averages) or 1
    return [{"op": e.key, "self_cpu_ms_per_step": round(e.self_cpu_time_total / 5 / 1000, 2),
             "share": round(e.self_cpu_time_total / total, 3)} for e in averages[:rows]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "classification.toml")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--load", default="not recorded", help="what else was running")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    model, batch = build_student(args.recipe)
    flops = step_flops(model, batch)
    variants = [(bf16, cl, False) for bf16 in (False, True) for cl in (False, True)]
    if not args.no_compile:
        variants += [(True, True, True), (False, True, True)]
    rows = []
    for bf16, cl, compiled in variants:
        name = f"{'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'contiguous'}{' compiled' if compiled else ''}"
        try:
            step = make_step(build_student(args.recipe)[0], bf16, cl, compiled, batch)
            seconds = measure_ms(step, args.steps, warmup=args.warmup) / 1000
        except Exception as error:  # a platform that cannot compile: report, keep the other rows
            rows.append({"variant": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
            continue
        achieved = flops / seconds
        rows.append({"variant": name, "step_ms": round(seconds * 1000, 2), "images_per_s": round(batch / seconds, 1),
                     "gflops": round(achieved / 1e9, 2),
                     "of_peak": round(achieved / peaks["bf16" if bf16 else "fp32"], 4)})
    timed = [r for r in rows if "step_ms" in r]
    fastest = min(timed, key=lambda r: r["step_ms"])
    bf16, cl, compiled = variants[[r["variant"] for r in rows].index(fastest["variant"])]
    profile = top_operators(make_step(build_student(args.recipe)[0], bf16, cl, False, batch))

    print(f"matmul peaks ({torch.get_num_threads()} threads): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; step FLOPs (fwd+bwd, batch {batch}): {flops / 1e9:.3f} G")
    print("| variant | step (ms, median) | images/s | GFLOP/s | of its dtype's matmul peak |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | {r['error']} | | | |")
        else:
            print(f"| {r['variant']} | {r['step_ms']} | {r['images_per_s']} | {r['gflops']} | {r['of_peak']:.1%} |")
    print(f"\ntop operators of '{fastest['variant']}' (eager), self CPU time per step:")
    for op in profile:
        print(f"  {op['op']:<40} {op['self_cpu_ms_per_step']:>8} ms  {op['share']:.1%}")
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python benchmarks/machine_efficiency.py " + " ".join(argv or sys.argv[1:]),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "load": args.load, "peaks_gflops": {k: round(v / 1e9, 2) for k, v in peaks.items()},
            "step_gflop": round(flops / 1e9, 4), "batch": batch, "rows": rows,
            "profile_of": fastest["variant"], "profile": profile}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
