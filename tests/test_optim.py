"""Optimizers and schedules."""

from __future__ import annotations

import math

import pytest
import torch

from kdengine.optim import Schedule, build_optimizer
from kdengine.recipe import OptimizerSpec, SchedulerSpec


def opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    o = build_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimizerSpec(name=name, lr=0.1, weight_decay=5e-4))
    assert isinstance(o, cls)
    assert o.param_groups[0]["lr"] == 0.1 and o.param_groups[0]["weight_decay"] == 5e-4


def test_cosine_per_step_with_warmup():
    o = opt()
    s = Schedule(o, SchedulerSpec(name="cosine", warmup_epochs=1), epochs=3, steps_per_epoch=10)
    assert s.lr == pytest.approx(0.01)
    lrs = []
    for _ in range(30):
        s.step()
        lrs.append(s.lr)
    assert lrs[9] == pytest.approx(1.0)  # end of warm-up
    assert lrs[19] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_step_decay():
    o = opt()
    s = Schedule(o, SchedulerSpec(name="step", step_size=2, gamma=0.5), epochs=6, steps_per_epoch=4)
    lrs = []
    for _ in range(24):
        lrs.append(s.lr)
        s.step()
    assert lrs[0] == 1.0 and lrs[7] == 1.0 and lrs[8] == 0.5 and lrs[16] == 0.25


def test_plateau_reduces_after_patience():
    o = opt()
    s = Schedule(o, SchedulerSpec(name="plateau", patience=1, factor=0.1), epochs=10, steps_per_epoch=1)
    for value in (0.5, 0.5, 0.5):
        s.step()
        s.end_epoch(value)
    assert s.lr == pytest.approx(0.1)


def test_state_round_trip():
    o = opt()
    s = Schedule(o, SchedulerSpec(name="cosine"), epochs=2, steps_per_epoch=5)
    for _ in range(3):
        s.step()
    o2 = opt()
    s2 = Schedule(o2, SchedulerSpec(name="cosine"), epochs=2, steps_per_epoch=5)
    s2.load_state_dict(s.state_dict())
    assert s2.lr == pytest.approx(s.lr)
