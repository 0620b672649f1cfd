"""Data-parallel training with two CPU processes (gloo) through `kdengine run --num-processes 2`: the same
metrics as one process with the same global batch, no sample counted twice, files written once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


RECIPE = """
[run]
name = "ddp"
seed = 0

[data]
name = "digits"
params = {{ image_size = 8, train_size = 256, val_size = 200, test_size = 301 }}

[teacher]
name = "toy.mlp"
params = {{ hidden = 64 }}

[student]
name = "toy.mlp"
params = {{ hidden = 16 }}

[train]
epochs = 3
batch_size = 32
baseline = false
optimizer = {{ name = "adamw", lr = 1e-2 }}

[[loss]]
name = "kl_div"
weight = 0.9

[[loss]]
name = "cross_entropy"
weight = 0.1

[[metric]]
name = "top1"
"""

#: Two processes average the same gradients in another order: results agree to float rounding,
#: which can flip a borderline prediction or two.
TOLERANCE = 2 / 301


def launch(args, plugin_site, out):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")]),
           "KDENGINE_DISABLE_PLUGINS": "broken,badhook"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # only the main process creates the run folder
    return runs[0], proc.stdout


def test_two_processes_match_one(tmp_path, plugin_site):
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(RECIPE.format())
    one, _ = launch([sys.executable, "-m", "kdengine", "run", str(recipe), "--no-progress",
                     "--output-dir", str(tmp_path / "one")], plugin_site, (tmp_path / "one"))
    two, stdout = launch([sys.executable, "-m", "kdengine", "run", str(recipe), "--num-processes", "2",
                          "--no-progress", "--output-dir", str(tmp_path / "two")], plugin_site, (tmp_path / "two"))
    assert stdout.count("student (distilled)") == 1  # printed by the main process only
    single = json.loads((one / "results.json").read_text())
    double = json.loads((two / "results.json").read_text())
    assert json.loads((two / "environment.json").read_text())["num_processes"] == 2
    for a, b in zip(single["stages"], double["stages"]):
        for ra, rb in zip(a["history"], b["history"]):
            value_a, value_b = ra["metrics"]["top1"], rb["metrics"]["top1"]
            assert abs(value_a - value_b) <= TOLERANCE + 1e-9, (a["stage"], ra["epoch"], value_a, value_b)
            # a whole number of the 200 val images (none padded in twice)
            assert abs(value_b * 200 - round(value_b * 200)) < 1e-4
        tested = b["test_best"]["top1"]
        assert abs(tested - a["test_best"]["top1"]) <= TOLERANCE + 1e-9
        assert abs(tested * 301 - round(tested * 301)) < 1e-4  # the 301 test images, likewise
    assert single["stages"][-1]["best"]["top1"] > 0.3  # well above chance (0.1), so the comparison means something
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6  # teacher and distilled, 3 epochs each, written once


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc). The launcher's workers run in sessions of
    their own, so a process group would not reach them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process has gone
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher, the torch.distributed agent and both workers at once."""
    for pid in process_tree(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def run_env(plugin_site) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")]),
            "KDENGINE_DISABLE_PLUGINS": "broken,badhook"}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_two_processes_killed_twice_then_resumed_match_the_uninterrupted_run(tmp_path, plugin_site):
    """Two-process runs are SIGKILLed (launcher and workers) once in the teacher stage and once in
    the distilled one, each time resumed with ``--resume RUN_DIR --num-processes 2``: the weights
    end bitwise equal to an uninterrupted two-process run, with the same metrics and log."""
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(RECIPE.format().replace("epochs = 3", "epochs = 5"))
    base = [sys.executable, "-m", "kdengine", "run"]
    reference, _ = launch(base + [str(recipe), "--num-processes", "2", "--no-progress",
                                  "--output-dir", str(tmp_path / "ref")], plugin_site, tmp_path / "ref")

    out = tmp_path / "killed"
    # metrics.jsonl lines before each kill: teacher epoch 2 (of 5), then distilled epoch 2
    kill_after = [2, 7]
    args = base + [str(recipe), "--num-processes", "2", "--no-progress", "--output-dir", str(out)]
    for attempt, lines_wanted in enumerate(kill_after):
        proc = subprocess.Popen(args, env=run_env(plugin_site), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 600
        logged = 0
        while proc.poll() is None and time.monotonic() < deadline:
            runs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
            log = runs[0] / "metrics.jsonl" if runs else None
            logged = len(log.read_text().splitlines()) if log and log.is_file() else 0
            if logged >= lines_wanted:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before kill {attempt + 1}: {proc.stderr.read().decode()[-3000:]}"
        kill_tree(proc)
        proc.stderr.close()
        (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
        args = base + ["--resume", str(run_dir), "--num-processes", "2", "--no-progress"]

    resumed = subprocess.run(args, capture_output=True, text=True, env=run_env(plugin_site), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("student (distilled)") == 1  # the table, printed by the main process only
    assert [p for p in out.iterdir() if p.is_dir()] == [run_dir]  # resumed in place, no new folder

    for name in ("teacher/best", "teacher/last", "distilled/best", "distilled/last"):
        want = load_file(str(reference / "checkpoints" / f"{name}.safetensors"))
        got = load_file(str(run_dir / "checkpoints" / f"{name}.safetensors"))
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}:{key} differs"
    ref_results = json.loads((reference / "results.json").read_text())
    got_results = json.loads((run_dir / "results.json").read_text())
    assert got_results["complete"]
    for a, b in zip(ref_results["stages"], got_results["stages"], strict=True):
        assert a["best"] == b["best"] and a["last"] == b["last"] and a["best_epoch"] == b["best_epoch"]
        assert [r["metrics"] for r in a["history"]] == [r["metrics"] for r in b["history"]]
        assert [r["losses"] for r in a["history"]] == [r["losses"] for r in b["history"]]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(l["stage"], l["epoch"]) for l in lines] == [(s, e) for s in ("teacher", "distilled") for e in range(1, 6)]
