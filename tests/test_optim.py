"""Optimizers and schedules."""

from __future__ import annotations

import math

import pytest
import torch

from pydantic import TypeAdapter, ValidationError

from kdengine.recipe import OptimizerSpec, SchedulerSpec, TrainSpec
from kdengine.train.optim import Schedule, build_optimizer

optimizer_spec = TypeAdapter(OptimizerSpec).validate_python
scheduler_spec = TypeAdapter(SchedulerSpec).validate_python


def opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    o = build_optimizer([torch.nn.Parameter(torch.zeros(2))], optimizer_spec(dict(name=name, lr=0.1, weight_decay=5e-4)))
    assert isinstance(o, cls)
    assert o.param_groups[0]["lr"] == 0.1 and o.param_groups[0]["weight_decay"] == 5e-4


def small_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4, 2))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_norm_and_bias_parameters_take_their_own_weight_decay(name):
    net = small_net()
    o = build_optimizer(net, optimizer_spec(dict(name=name, lr=0.1, weight_decay=5e-4, norm_bias_weight_decay=0.0)))
    decay_of = {id(p): group["weight_decay"] for group in o.param_groups for p in group["params"]}
    named = dict(net.named_parameters())
    assert len(decay_of) == len(named)
    for key, param in named.items():
        expected = 5e-4 if key in ("0.weight", "3.weight") else 0.0  # conv and linear weights decay
        assert decay_of[id(param)] == expected, key


def test_without_a_split_every_parameter_decays_alike_and_frozen_ones_are_left_out():
    net = small_net()
    net[1].requires_grad_(False)
    o = build_optimizer(net, optimizer_spec(dict(name="sgd", lr=0.1, weight_decay=5e-4)))
    assert len(o.param_groups) == 1 and o.param_groups[0]["weight_decay"] == 5e-4
    assert {id(p) for p in o.param_groups[0]["params"]} == {id(p) for p in net.parameters() if p.requires_grad}


def test_cosine_per_step_with_warmup():
    o = opt()
    s = Schedule(o, scheduler_spec(dict(name="cosine", warmup_epochs=1)), epochs=3, steps_per_epoch=10)
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
    s = Schedule(o, scheduler_spec(dict(name="step", step_size=2, gamma=0.5)), epochs=6, steps_per_epoch=4)
    lrs = []
    for _ in range(24):
        lrs.append(s.lr)
        s.step()
    assert lrs[0] == 1.0 and lrs[7] == 1.0 and lrs[8] == 0.5 and lrs[16] == 0.25


def test_step_decay_at_milestones_matches_torch_multistep():
    o = opt()
    s = Schedule(o, scheduler_spec(dict(name="step", milestones=[3, 5], gamma=0.1)), epochs=8, steps_per_epoch=2)
    reference_opt = opt()
    reference = torch.optim.lr_scheduler.MultiStepLR(reference_opt, milestones=[3, 5], gamma=0.1)
    for epoch in range(8):
        for _ in range(2):  # both steps of an epoch run at that epoch's lr
            assert s.lr == pytest.approx(reference_opt.param_groups[0]["lr"]), epoch
            s.step()
        reference_opt.step()
        reference.step()
    assert s.lr == pytest.approx(0.01)


@pytest.mark.parametrize("milestones", [[0, 5], [5, 5], [6, 3], []])
def test_milestones_must_increase_from_epoch_one(milestones):
    with pytest.raises(ValidationError):
        scheduler_spec(dict(name="step", milestones=milestones))


def test_plateau_after_warm_up_starts_from_the_base_lr():
    o = opt(lr=0.5)
    s = Schedule(o, scheduler_spec(dict(name="plateau", warmup_epochs=1, patience=1, factor=0.1)), epochs=10,
                 steps_per_epoch=4)
    lrs = []
    for _ in range(4):
        lrs.append(s.lr)
        s.step()
    s.end_epoch(0.5)
    assert lrs[0] == pytest.approx(0.005) and lrs[-1] < 0.5 and s.lr == pytest.approx(0.5)
    for value in (0.5, 0.5):  # then plateau reduces it as usual
        for _ in range(4):
            s.step()
        s.end_epoch(value)
    assert s.lr == pytest.approx(0.05)


def test_plateau_reduces_after_patience():
    o = opt()
    s = Schedule(o, scheduler_spec(dict(name="plateau", patience=1, factor=0.1)), epochs=10, steps_per_epoch=1)
    for value in (0.5, 0.5, 0.5):
        s.step()
        s.end_epoch(value)
    assert s.lr == pytest.approx(0.1)


def test_state_round_trip():
    o = opt()
    s = Schedule(o, scheduler_spec(dict(name="cosine")), epochs=2, steps_per_epoch=5)
    for _ in range(3):
        s.step()
    o2 = opt()
    s2 = Schedule(o2, scheduler_spec(dict(name="cosine")), epochs=2, steps_per_epoch=5)
    s2.load_state_dict(s.state_dict())
    assert s2.lr == pytest.approx(s.lr)


@pytest.mark.parametrize("table,problem", [
    ({"name": "adam", "momentum": 0.9}, "momentum"),
    ({"name": "sgd", "betas": [0.9, 0.99]}, "betas"),
    ({"name": "lion"}, "name: input should be 'sgd', 'adam' or 'adamw'"),
])
def test_each_optimizer_accepts_its_own_keys_only(table, problem):
    with pytest.raises(ValidationError, match=problem):
        optimizer_spec(table)


@pytest.mark.parametrize("table,problem", [
    ({"name": "cosine", "patience": 3}, "patience"),
    ({"name": "plateau", "step_size": 3}, "step_size"),
    ({"name": "none", "min_lr": 0.1}, "min_lr"),
    ({"name": "linear"}, "name: input should be 'none', 'cosine', 'step' or 'plateau'"),
])
def test_each_schedule_accepts_its_own_keys_only(table, problem):
    with pytest.raises(ValidationError, match=problem):
        scheduler_spec(table)


def test_optimizer_defaults_suit_each_optimizer():
    assert optimizer_spec({"name": "adamw"}).lr == pytest.approx(1e-3)
    assert optimizer_spec({"name": "adamw"}).weight_decay == pytest.approx(0.01)
    assert optimizer_spec({"name": "adam"}).lr == pytest.approx(1e-3)
    sgd = optimizer_spec({"lr": 0.05})  # a table without a name is SGD, as before
    assert sgd.name == "sgd" and sgd.momentum == pytest.approx(0.9)
    train = TrainSpec(epochs=1, batch_size=2)
    assert train.optimizer.name == "sgd" and train.scheduler.name == "none"
