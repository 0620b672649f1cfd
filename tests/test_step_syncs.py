"""A training step does not wait for the device: the finite checks of the loss and the gradients
stay device flags, a fused optimizer skips a failed update on the device (``found_inf``), and
the outcome says what failed only when asked (the epoch loop asks once per many steps).
Before, every step read the loss's finite flag per micro-batch and the gradient norm's."""

from __future__ import annotations

import contextlib

import pytest
import torch

from kdengine.recipe import TrainSpec
from kdengine.recipe.optimizers import AdamSpec, ConstantSchedule
from kdengine.train.accelerator import make_accelerator
from kdengine.train.optim import Schedule, build_optimizer
from kdengine.train.step import PROBLEM_READ_STEPS, read_deferred, train_step
from nan_step_worker import Objective  # tests/ is on the path: a linear classifier

#: The tensor methods that copy a value to the host and so wait for the device.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def counting_host_reads():
    counts = {"reads": 0}
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(original):
        def read(self, *args, **kwargs):
            counts["reads"] += 1
            return original(self, *args, **kwargs)
        return read

    for name, original in saved.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        yield counts
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def set_up(**train):
    accelerator = make_accelerator("no")
    objective = Objective()
    optimizer = build_optimizer(objective, AdamSpec(lr=0.1))
    schedule = Schedule(optimizer, ConstantSchedule(), epochs=1, steps_per_epoch=100)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    spec = TrainSpec(epochs=1, batch_size=4, on_nan="skip", **train)
    generator = torch.Generator().manual_seed(0)

    def step(poison: bool = False):
        inputs = torch.randn(4, 3, generator=generator)
        if poison:
            inputs[0, 0] = float("nan")
        return train_step(accelerator, objective, optimizer, schedule, spec, [1.0], ["cross_entropy"],
                          inputs, torch.tensor([0, 1, 0, 1]), lambda x, rows: (None, {}), None)
    return objective, optimizer, step


def weights(objective):
    return [p.detach().clone() for p in objective.parameters()]


def test_the_optimizer_is_fused_on_the_cpu():
    _, optimizer, _ = set_up()
    assert all(group["fused"] for group in optimizer.optimizer.param_groups)


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_steps_after_the_first_read_nothing_from_the_device(grad_clip):
    _, _, step = set_up(grad_clip=grad_clip)
    step()  # the first step is checked on the host: a fused first step must not be skipped
    with counting_host_reads() as counts:
        outcomes = [step() for _ in range(5)]
    assert counts["reads"] == 0
    assert [o.problem for o in outcomes] == [None] * 5  # asking reads, after the count


def test_a_non_finite_loss_is_skipped_on_the_device_and_reported_when_read():
    objective, optimizer, step = set_up()
    step()
    before = weights(objective)
    steps_before = [s["step"].clone() for s in optimizer.optimizer.state.values()]
    failed = step(poison=True)
    assert failed.flags is not None and failed.problem == "non-finite loss (terms: cross_entropy)"
    assert all(torch.equal(a, b) for a, b in zip(before, objective.parameters()))  # no update
    assert [s["step"] for s in optimizer.optimizer.state.values()] == steps_before  # Adam's count too
    assert step().problem is None
    assert not all(torch.equal(a, b) for a, b in zip(before, objective.parameters()))


def test_non_finite_gradients_are_skipped_on_the_device():
    objective, _, step = set_up()
    step()
    handle = objective.student.weight.register_hook(lambda grad: grad * float("inf"))
    before = weights(objective)
    assert step().problem == "non-finite gradients"
    assert all(torch.equal(a, b) for a, b in zip(before, objective.parameters()))
    handle.remove()


def test_the_epoch_loop_reads_many_checks_at_once():
    _, _, step = set_up()
    step()
    pending = [(i, step(poison=i == 3)) for i in range(PROBLEM_READ_STEPS)]
    with counting_host_reads() as counts:
        failed = read_deferred(pending)
    assert counts["reads"] == 1 and pending == []
    assert failed == [(3, "non-finite loss (terms: cross_entropy)")]
