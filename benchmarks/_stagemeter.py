"""Shared by the benchmarks: the machine in one line, and per-stage timing and peak memory of a
kdengine run measured inside the process that runs it.

Peak memory is the process's resident-set high-water mark (VmHWM), reset at the start of every
stage (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), so each stage's peak is its own. Where
the reset is not allowed the peak is the process's peak so far, and the table says so.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " +avx512_bf16" if "avx512_bf16" in text else ""
    except OSError:
        pass
    return (f"{cpu}{flags}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, python {platform.python_version()}")


def _peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_stages(out_file: Path) -> None:
    """Wrap kdengine's stage trainer: for every stage, write its epoch times and peak memory as a
    JSON line to ``out_file``."""
    from kdengine.train import run as engine

    original = engine.train_stage

    def measured(ctx, plan, factory, source, resume=None):
        reset = _reset_peak()
        result = original(ctx, plan, factory, source, resume=resume)
        row = {"stage": plan.name, "epoch_seconds": [r.seconds for r in result.history],
               "train_seconds": [r.train_seconds for r in result.history],
               "eval_seconds": [r.eval_seconds for r in result.history],
               "peak_bytes": _peak_bytes(), "peak_reset": reset, "images": len(ctx.train_set),
               "steps": plan.train.max_steps_per_epoch}
        with open(out_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        return result

    engine.train_stage = measured


def read_stages(out_file: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in Path(out_file).read_text().splitlines() if line.strip()]
    return {row["stage"]: row for row in rows}


def watch_stage(name: str, rows: list[dict]) -> None:
    """Wrap kdengine's stage trainer: for the stage called ``name``, append to ``rows`` the time
    between its optimizer steps and its peak memory over the training steps (the device
    allocator's peak on a GPU, the resident set on a CPU, as ``train.max_memory`` measures them),
    reset after the first step so that set-up (teacher cache, memory-budget measurements) and the
    first step's one-off costs are left out."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from kdengine.train import run as engine
    from kdengine.train.memory import PeakMeter

    original = engine.train_stage

    def watched(ctx, plan, factory, source, resume=None):
        if plan.name != name:
            return original(ctx, plan, factory, source, resume=resume)
        import time

        meter, stamps = PeakMeter(ctx.device), []

        def stamp(optimizer, args, kwargs):
            if not stamps:
                meter.reset()
            stamps.append(time.perf_counter())

        hook = register_optimizer_step_post_hook(stamp)
        try:
            result = original(ctx, plan, factory, source, resume=resume)
        finally:
            hook.remove()
        rows.append({"stage": plan.name, "step_seconds": [b - a for a, b in zip(stamps, stamps[1:])],
                     "peak_bytes": meter.peak() if stamps else None, "device": str(ctx.device),
                     "batch": plan.train.batch_size})
        return result

    engine.train_stage = watched


def git_revision() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return out + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def busy_processes(shown: int = 5) -> list[str]:
    """What else was running: the busiest processes (CPU %, command name) and the load average."""
    import subprocess

    try:
        lines = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True,
                               check=True).stdout.splitlines()[1:shown + 1]
    except (OSError, subprocess.CalledProcessError):
        lines = []
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [f"load average {load}"] + [" ".join(line.split()) for line in lines]


def write_report(path: Path, rows: list[dict], table: str, running_before: list[str]) -> None:
    """Print the table with the machine, and write it with its rows, the git revision, the command
    and what else was running before and after the measurement as the JSON record at ``path``."""
    import sys

    print(f"machine: {machine()}\n\n{table}")
    report = {"revision": git_revision(), "command": " ".join([Path(sys.executable).name] + sys.argv),
              "machine": machine(), "running_before": running_before, "running_after": busy_processes(),
              "rows": rows, "table": table}
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {path}")
