"""A non-finite loss on one process of several: every process skips that step together (before,
the process with the NaN returned before its backward while the others all-reduced, so the
processes paired different batches' gradients and then hung)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "nan_step_worker.py"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])  # host checks; device checks (fused Adam)
def test_a_nan_on_one_of_two_gloo_processes_is_skipped_by_both(tmp_path, optimizer):
    import nan_step_worker as worker

    prefix = tmp_path / "ranks"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(prefix), optimizer], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads(Path(f"{prefix}.{rank}.json").read_text()) for rank in (0, 1)]
    expected = [None] * worker.STEPS
    expected[worker.BAD_STEP] = "non-finite loss on another process"
    assert ranks[1 - worker.BAD_RANK]["outcomes"] == expected
    expected[worker.BAD_STEP] = "non-finite loss (terms: cross_entropy)"
    assert ranks[worker.BAD_RANK]["outcomes"] == expected
    assert ranks[0]["weights"] == ranks[1]["weights"]  # the same updates on both: still one model


def test_processes_wait_for_a_cache_build_longer_than_torch_default():
    """The main process builds a missing teacher cache while the others wait at a barrier: the
    process group is opened with a timeout of hours, not torch's 10 (NCCL) or 30 (gloo) minutes."""
    from datetime import timedelta

    from kdengine.train.accelerator import PROCESS_GROUP_TIMEOUT, make_accelerator

    accelerator = make_accelerator("no")
    assert accelerator.init_handler.timeout == PROCESS_GROUP_TIMEOUT >= timedelta(hours=6)
