"""benchmarks/record_bsds.py: seeds become mean ± std rows, the last weights fall back to the
val-best scoring only when they are the same epoch, and a mean over fewer seeds names them."""

from __future__ import annotations

import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import record_bsds  # noqa: E402


def fake_run(folder, seed, best_epoch, epochs, best_ods, last_ods=None):
    folder.mkdir(parents=True)
    stage = {"stage": "distilled", "model": "unet", "params": 10, "best_epoch": best_epoch,
             "best": {"ods": 0.44}, "history": [{}] * epochs, "loss_weights": {}}
    (folder / "results.json").write_text(json.dumps({"seed": seed, "stages": [stage]}))
    score = {"ods": best_ods, "ois": best_ods, "dice": 0.1}
    (folder / "bsds_test_best_distilled.json").write_text(json.dumps({"distilled": score}))
    if last_ods is not None:
        (folder / "bsds_test_last_distilled.json").write_text(
            json.dumps({"distilled": {**score, "ods": last_ods}}))
    return folder


def test_rows_spread_over_seeds_and_name_a_partial_mean(tmp_path, capsys):
    runs = [fake_run(tmp_path / "a", 0, 10, 12, 0.60),  # best is not last, last not scored
            fake_run(tmp_path / "b", 1, 12, 12, 0.62),  # best is last: one scoring serves both
            fake_run(tmp_path / "c", 2, 2, 12, 0.40, last_ods=0.64)]
    out = tmp_path / "record.json"
    assert record_bsds.main([*(f"--entry=d+t={run}:distilled" for run in runs), "--out", str(out),
                             "--what", "w", "--command", "c"]) == 0
    row = json.loads(out.read_text())["rows"]["d+t"]
    assert row["test_best"]["ods"]["values"] == [0.60, 0.62, 0.40]
    assert row["test_last"]["ods"]["seeds"] == [1, 2] and row["test_last"]["ods"]["mean"] == 0.63
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| d+t"))
    assert "0.630 ± 0.014 (seeds 1, 2)" in line and "0.540 ± 0.122 |" in line and "10 / 12 / 2" in line
