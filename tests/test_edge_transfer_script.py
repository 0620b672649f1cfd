"""benchmarks/edge_transfer.sh end to end at a smoke budget on the real BSDS500 (skipped without
it), and both transfer scripts parse: four rows (three without the scratch+transfer ablation), under
the strong views of consistent teaching."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import save_file

from conftest import ROOT, shared_data_root


@pytest.mark.parametrize("script", ["edge_transfer.sh", "gpu_transfer.sh"])
def test_the_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], check=True)


@pytest.mark.skipif(shared_data_root() is None or not (shared_data_root() / "BSDS500").is_dir(),
                    reason="needs the real BSDS500 (../shared/data)")
@pytest.mark.parametrize("ablation", ["1", "0"])
def test_four_rows_per_seed_are_run_scored_and_recorded(tmp_path, ablation):
    from kdengine.plugins.catalog import get_catalog
    from kdengine import DataInfo

    data = shared_data_root()
    teacher = get_catalog().get("teacher", "unet")({"encoder": "resnet34", "encoder_weights": None}).build(
        DataInfo("edges", 3, 1))
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(weights))
    out = tmp_path / "record.json"
    env = {**os.environ, "ROOT": str(data / "BSDS500"), "TEACHER": str(weights), "EPOCHS": "1", "SEEDS": "0",
           "JOBS": "1", "EVAL_LIMIT": "2", "AUGMENT": "strong", "THRESHOLDS": "5", "RUNS": str(tmp_path / "runs"), "OUT": str(out),
           "EXTRA": "--set train.max_steps_per_epoch=1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "ABLATION": ablation}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "edge_transfer.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"scratch", "distilled", "distilled+transfer"} | ({"scratch+transfer"} if ablation == "1" else set())
    for row in rows.values():
        (entry,) = row["entries"]
        assert entry["seed"] == 0 and 0 <= entry["test_best"]["ods"] <= 1
    with_transfer = json.loads((next((tmp_path / "runs" / "transfer-0").iterdir()) / "recipe.json").read_text())
    assert with_transfer["data"]["transfer"]["name"] == "photo_folder" and not with_transfer["train"]["baseline"]
    assert with_transfer["train"]["baseline_transfer"] == (ablation == "1") and with_transfer["data"]["params"]["augment"] == "strong"
    assert with_transfer["data"]["transfer"]["params"]["augment"] == "strong"
