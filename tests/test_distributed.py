"""Data-parallel training with two CPU processes (gloo) through `kdengine run --num-processes 2`: the same
metrics as one process with the same global batch, no sample counted twice, files written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys


RECIPE = """
[run]
name = "ddp"
seed = 0

[data]
name = "digits"
params = {{ image_size = 8, train_size = 256, eval_size = 301 }}

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
            # every one of the 301 evaluation images counted exactly once (none padded in twice)
            assert abs(value_b * 301 - round(value_b * 301)) < 1e-4
    assert single["stages"][-1]["best"]["top1"] > 0.3  # well above chance (0.1), so the comparison means something
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6  # teacher and distilled, 3 epochs each, written once
