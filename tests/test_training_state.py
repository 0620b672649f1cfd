"""The training state a resume starts from: every process's random generators, each restored to
its own process (before, the first process's were restored on every process)."""

from __future__ import annotations

import random

import torch

from kdengine.io.state import TrainingState, rng_state, set_rng_state
from kdengine.io.results import StageResult


def state_with(rngs):
    return TrainingState(epoch=1, objective={"w": torch.ones(2)}, optimizer={}, schedule={}, rng=rngs[0],
                         best_value=0.5, result=StageResult(stage="distilled", model="m", params=1), rngs=rngs)


def draws() -> tuple[float, float]:
    return random.random(), float(torch.rand(()))


def test_each_process_resumes_with_its_own_generators(tmp_path):
    per_process = []
    for process in range(3):
        random.seed(process)
        torch.manual_seed(100 + process)
        per_process.append(rng_state())
    expected = []
    for state in per_process:
        set_rng_state(state)
        expected.append(draws())
    path = tmp_path / "state.pt"
    state_with(per_process).save(path)
    loaded = TrainingState.load(path)  # weights_only: the generators' states are plain tensors and lists
    for process in range(3):
        set_rng_state(loaded.rng_for(process, 3))
        assert draws() == expected[process], process
    assert len({e for e in expected}) == 3


def test_a_state_of_another_process_count_falls_back_to_the_first_process(tmp_path):
    random.seed(7)
    first = rng_state()
    random.seed(8)
    state = state_with([first, rng_state()])
    assert state.rng_for(1, 2) is state.rngs[1]
    assert state.rng_for(2, 4) is first and state.rng_for(0, 1) is first
    state.rngs = None
    assert state.rng_for(1, 2) is first
