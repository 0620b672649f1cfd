"""Gathering evaluation batches across processes: whole images of different sizes (lists, or
stacks of different shapes on different processes) are each counted once, and two gloo
processes score an odd number of such images exactly as one process does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kdengine.train.gather import count, first, layout, real_samples

WORKER = Path(__file__).parent / "gather_worker.py"


def test_layout_names_tensor_shapes_and_refuses_lists():
    stacked = (torch.zeros(2, 3, 4, 4), {"mask": torch.zeros(2, 1, 4, 4), "annotators": torch.zeros(2, 5, 4, 4)})
    assert layout(stacked) == layout((torch.ones(2, 3, 4, 4), {"annotators": torch.ones(2, 5, 4, 4),
                                                             "mask": torch.ones(2, 1, 4, 4)}))
    assert layout(stacked) != layout((torch.zeros(2, 3, 4, 4), {"mask": torch.zeros(2, 1, 4, 4),
                                                                "annotators": torch.zeros(2, 4, 4, 4)}))
    assert layout((torch.zeros(2, 3, 4, 4), [torch.zeros(1, 4, 4)])) is None


def test_count_and_first_cut_samples_not_channels():
    images = [torch.zeros(3, 4, 4), torch.zeros(3, 6, 4), torch.zeros(3, 4, 6)]
    assert count(images) == 3 and [i.shape for i in first(images, 2)] == [(3, 4, 4), (3, 6, 4)]
    targets = {"mask": torch.zeros(3, 1, 4, 4), "annotators": torch.zeros(3, 5, 4, 4)}
    cut = first(targets, 1)
    assert count(targets) == 3 and cut["mask"].shape == (1, 1, 4, 4) and cut["annotators"].shape == (1, 5, 4, 4)


def test_real_samples_keep_the_remainder_of_the_last_step_in_process_order():
    pieces = [([torch.full((3, 2, 2), 4.0), torch.full((3, 4, 2), 0.0)], ["t4", "t0"]),
              (torch.ones(2, 3, 2, 2), ["t1", "t2"])]
    last = SimpleNamespace(gradient_state=SimpleNamespace(end_of_dataloader=True, remainder=1))
    ((outputs, targets),) = real_samples(last, pieces)
    assert len(outputs) == 1 and float(outputs[0][0, 0, 0]) == 4.0 and targets == ["t4"]
    middle = SimpleNamespace(gradient_state=SimpleNamespace(end_of_dataloader=False, remainder=1))
    assert real_samples(middle, pieces) is pieces


def test_two_gloo_processes_score_images_of_different_sizes_as_one_process(tmp_path):
    import gather_worker

    reference = gather_worker.scores()
    out = tmp_path / "two.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(out.read_text())
    for batch_size, single in reference.items():
        got = two[str(batch_size)]
        assert got["images"] == len(gather_worker.SIZES)  # every image once, none of the padding
        assert got["signature"] == pytest.approx(single["signature"], rel=1e-12)
        assert got["psnr"] == pytest.approx(single["psnr"], rel=1e-6), batch_size
