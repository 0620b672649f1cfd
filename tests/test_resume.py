"""Kill-safe, exact resume: a run killed with SIGKILL at random points and resumed each time ends
with weights bitwise equal to an uninterrupted run."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import interrupt_after_epoch
from kdengine.cli import main

RECIPE = """
[run]
name = "resume"
seed = 3

[data]
name = "digits"
params = { image_size = 8, train_size = 192, val_size = 128, test_size = 128, augment = { crop_padding = 1, flip = true, mixup_alpha = 0.4 } }

[teacher]
name = "torchvision"
params = { model = "mobilenet_v2", width_mult = 0.25, cifar_stem = true }

[student]
name = "torchvision"
params = { model = "mobilenet_v2", width_mult = 0.25, cifar_stem = true }

[train]
epochs = 3
batch_size = 32
max_steps_per_epoch = 4
optimizer = { name = "sgd", lr = 0.02, momentum = 0.9 }
scheduler = { name = "cosine", warmup_epochs = 1 }

[[loss]]
name = "kl_div"
weight = 0.9

[[loss]]
name = "cross_entropy"
weight = 0.1

[[metric]]
name = "top1"
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdengine", *args, "--no-progress"]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def only_run(folder: Path) -> Path | None:
    runs = [p for p in folder.iterdir() if p.is_dir()] if folder.exists() else []
    return runs[0] if runs else None


def weights(run_dir: Path) -> dict:
    out = {}
    for path in sorted((run_dir / "checkpoints").rglob("*.safetensors")):
        out[str(path.relative_to(run_dir))] = load_file(str(path))
    return out


def test_sigkill_at_random_points_then_resume_is_bitwise_equal(tmp_path):
    recipe = tmp_path / "resume.toml"
    recipe.write_text(RECIPE)
    started = time.monotonic()
    subprocess.run(cli("run", str(recipe), "--output-dir", str(tmp_path / "ref")), check=True, env=env(),
                   capture_output=True)
    duration = time.monotonic() - started
    reference = only_run(tmp_path / "ref")

    # Kill points spread over the whole run: after k epochs have been logged (k rising), plus a
    # random delay, so kills land in training, in evaluation and around checkpoint writes.
    rng = random.Random(7)
    targets = sorted(rng.sample(range(0, 9), 5))
    out = tmp_path / "killed"
    kills = 0
    for attempt in range(12):
        run_dir = only_run(out)
        args = cli("run", "--resume", str(run_dir)) if run_dir else cli("run", str(recipe), "--output-dir", str(out))
        proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < len(targets):
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                current = only_run(out)
                log = current / "metrics.jsonl" if current else None
                logged = len(log.read_text().splitlines()) if log and log.is_file() else 0
                if logged >= targets[kills]:
                    time.sleep(rng.uniform(0.0, 0.3) * duration / 9)
                    break
                time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
        break
    else:
        pytest.fail("the killed run never finished")
    assert kills == len(targets)

    run_dir = only_run(out)
    ref_weights, got_weights = weights(reference), weights(run_dir)
    assert set(ref_weights) == set(got_weights)
    for name, tensors in ref_weights.items():
        for key, tensor in tensors.items():
            assert (tensor == got_weights[name][key]).all(), f"{name}:{key} differs"
    ref_results = json.loads((reference / "results.json").read_text())
    got_results = json.loads((run_dir / "results.json").read_text())
    for a, b in zip(ref_results["stages"], got_results["stages"]):
        assert a["best"] == b["best"] and a["last"] == b["last"]
        assert [r["metrics"] for r in a["history"]] == [r["metrics"] for r in b["history"]]
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 9  # one line per stage and epoch, none duplicated by the restarts


def test_resume_refuses_a_finished_run_and_a_non_run_folder(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.replace("epochs = 3", "epochs = 1"))
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--no-progress",
                 "--set", "train.baseline=false"]) == 0
    run_dir = only_run(tmp_path / "runs")
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "already finished" in capsys.readouterr().err


def crd_recipe(tiny_recipe: dict) -> dict:
    recipe = copy.deepcopy(tiny_recipe)
    recipe["run"]["name"] = "crd-resume"
    recipe["data"]["params"].update(train_size=128, val_size=32, test_size=32)
    recipe["teacher"]["train"] = {"epochs": 1}
    recipe["train"].update(epochs=2, baseline=False)
    # A queue of 64 fills in epoch 1 (2 steps of 32), so epoch 2's negatives all come from it.
    recipe["loss"] = [{"name": "crd", "weight": 0.5, "params": {"student_layer": "classifier.0",
                                                                "teacher_layer": "classifier.0",
                                                                "feature_dim": 16, "queue_size": 64}},
                      {"name": "cross_entropy", "weight": 0.5}]
    return recipe


@pytest.mark.usefixtures("one_thread")
def test_a_crd_run_resumed_after_epoch_one_equals_the_uninterrupted_run(tiny_recipe, tmp_path, monkeypatch):
    """CRD's queue of negatives is training state: a resume restores it (and the exported
    student weights still hold the student alone)."""
    import torch

    import kdengine
    from kdengine.io.state import TrainingState

    recipe = crd_recipe(tiny_recipe)
    reference = Path(kdengine.run(recipe, output_dir=tmp_path / "ref", progress=False).run_dir)

    interrupt_after_epoch(monkeypatch, "distilled", 1)
    with pytest.raises(RuntimeError, match="interrupted"):
        kdengine.run(recipe, output_dir=tmp_path / "killed", progress=False)
    monkeypatch.undo()
    run_dir = only_run(tmp_path / "killed")
    state = TrainingState.load(run_dir / "checkpoints" / "distilled" / "state.pt")
    assert int(state.objective["terms.0.queue_filled"]) == 64  # the queue is in the training state
    kdengine.resume(run_dir, progress=False)

    ref_weights, got_weights = weights(reference), weights(run_dir)
    assert set(ref_weights) == set(got_weights)
    for name, tensors in ref_weights.items():
        assert tensors.keys() == got_weights[name].keys()
        assert not any("queue" in key or key.startswith("terms.") for key in tensors), name  # student only
        for key, tensor in tensors.items():
            assert torch.equal(tensor, got_weights[name][key]), f"{name}:{key} differs"
    ref_results = json.loads((reference / "results.json").read_text())["stages"]
    got_results = json.loads((run_dir / "results.json").read_text())["stages"]
    assert [r["losses"] for r in ref_results[-1]["history"]] == [r["losses"] for r in got_results[-1]["history"]]
