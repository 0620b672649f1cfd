"""benchmarks/gpu_check.py: its CPU smoke test (fp32 and bf16, teacher inline and cached, a memory
budget) runs and reports every row."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--smoke",
                           "--json", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["precision"], r["teacher"], r["max_memory"]) for r in rows} == {
        ("fp32", "inline", "-"), ("bf16", "cached", "-"), ("bf16", "inline", "2GiB")}
    for row in rows:
        # no row on a CPU has fp16's gradient scaler: its column says so, rather than "0 skipped"
        assert row["device"] == "cpu" and row["scaler_skipped"] is None
        assert row["images_per_s"] > 0 and row["peak_mib"] > 0 and 0.0 <= row["top1_test"] <= 1.0
        assert math.isfinite(row["top1_test"])
    assert "| precision | teacher | max_memory |" in done.stdout
    assert all(line.split("|")[8].strip() == "-" for line in done.stdout.splitlines() if line.startswith("| fp32")
               or line.startswith("| bf16"))
