"""Trains a tiny objective for a few steps in each of two gloo processes, with a non-finite loss on
one process only at step 2. ``tests/test_step.py`` runs it under ``torch.distributed.run``:
``python nan_step_worker.py OUT_PREFIX [sgd|adam]`` writes each rank's outcomes and final weights
(SGD reads each step's checks on the host; fused Adam keeps them on the device after its first step)."""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from kdengine.recipe import TrainSpec
from kdengine.recipe.optimizers import AdamSpec, ConstantSchedule, SGDSpec
from kdengine.train.accelerator import close_process_group, make_accelerator
from kdengine.train.optim import Schedule, build_optimizer
from kdengine.train.step import train_step

STEPS = 4
BAD_STEP, BAD_RANK = 1, 1


class Objective(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Linear(3, 2)

    def forward(self, inputs, targets, teacher_out=None, teacher_features=None):
        output = self.student(inputs)
        return output, [nn.functional.cross_entropy(output, targets)]


def main(prefix: str, kind: str = "sgd") -> None:
    accelerator = make_accelerator("no")
    objective = Objective()
    optimizer = build_optimizer(objective, SGDSpec(lr=0.1) if kind == "sgd" else AdamSpec(lr=0.1))
    schedule = Schedule(optimizer, ConstantSchedule(), epochs=1, steps_per_epoch=STEPS)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    train = TrainSpec(epochs=1, batch_size=4, on_nan="skip")
    rank = accelerator.process_index
    generator = torch.Generator().manual_seed(rank)
    outcomes = []
    for step in range(STEPS):
        inputs = torch.randn(2, 3, generator=generator)
        if step == BAD_STEP and rank == BAD_RANK:
            inputs[0, 0] = float("nan")
        targets = torch.tensor([0, 1])
        done = train_step(accelerator, objective, optimizer, schedule, train, [1.0], ["cross_entropy"],
                          inputs, targets, lambda x, rows: (None, {}), None)
        outcomes.append(done.problem)
    weights = [p.detach().flatten().tolist() for p in accelerator.unwrap_model(objective).parameters()]
    with open(f"{prefix}.{rank}.json", "w", encoding="utf-8") as out:
        json.dump({"outcomes": outcomes, "weights": weights, "lr": schedule.lr}, out)
    close_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
