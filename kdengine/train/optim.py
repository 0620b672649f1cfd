"""Optimizers and learning-rate schedules named in a recipe's ``[train]`` section."""

from __future__ import annotations

import bisect
import math
from typing import Iterable

import torch

from kdengine.recipe import OptimizerSpec, SchedulerSpec


def parameter_groups(params: torch.nn.Module | Iterable[torch.nn.Parameter], spec: OptimizerSpec) -> list:
    """The trainable parameters, split by timm's rule (one-dimensional tensors and biases apart)
    where ``norm_bias_weight_decay`` gives them a decay of their own."""
    if isinstance(params, torch.nn.Module):
        if spec.norm_bias_weight_decay is not None and spec.norm_bias_weight_decay != spec.weight_decay:
            from timm.optim import param_groups_weight_decay

            groups = param_groups_weight_decay(params, weight_decay=1.0)  # 1.0 marks the decayed group
            for group in groups:
                group["weight_decay"] = spec.weight_decay if group["weight_decay"] else spec.norm_bias_weight_decay
            return [group for group in groups if group["params"]]
        params = params.parameters()
    return [p for p in params if p.requires_grad]


def build_optimizer(params: torch.nn.Module | Iterable[torch.nn.Parameter], spec: OptimizerSpec,
                    fuse: bool = True) -> torch.optim.Optimizer:
    """``spec``'s optimizer over ``params``: a module's parameters (so that one-dimensional ones
    can take ``norm_bias_weight_decay``) or the parameters themselves. ``fuse``: torch's fused
    kernels where the parameters allow (:func:`can_fuse`); not under fp16's gradient scaler, whose
    skipped steps Accelerate only sees when the scaler leaves out the optimizer's step, which it
    does not for a fused optimizer (the kernel skips instead)."""
    params = parameter_groups(params, spec)
    fused = can_fuse(params) if fuse else None
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov and spec.momentum > 0,
            weight_decay=spec.weight_decay,  # unfused: see can_fuse
        )
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, fused=fused)


#: Devices whose fused Adam and AdamW kernels torch has.
FUSED_DEVICES = ("cpu", "cuda")


def can_fuse(params: list) -> bool | None:
    """Whether the optimizer can be torch's fused one: every parameter a floating tensor on a
    device with fused kernels. Fused, an update is one kernel per parameter group, and it can be
    skipped on the device (``found_inf``), so a non-finite step costs no wait for the device
    (:mod:`kdengine.train.step`). None lets torch choose its default. SGD stays unfused: torch's
    fused SGD fails once some parameters have momentum buffers and others not yet (a backbone
    released after ``freeze_backbone_epochs``), so its steps read their checks on the host."""
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    ok = bool(tensors) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in tensors)
    return True if ok else None


class Schedule:
    """Per-step warm-up and decay, plus ReduceLROnPlateau stepped once per epoch.

    ``step()`` is called after every optimizer step, ``end_epoch(value)`` after every evaluation.
    Cosine and step decay are computed per optimizer step so the curve is smooth whatever the
    epoch length; plateau reacts to the monitored metric.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, spec: SchedulerSpec, epochs: int,
                 steps_per_epoch: int, higher_is_better: bool = True):
        self.optimizer = optimizer
        self.spec = spec
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = epochs * self.steps_per_epoch
        self.warmup_steps = spec.warmup_epochs * self.steps_per_epoch
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0
        self.plateau = None
        if spec.name == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max" if higher_is_better else "min", factor=spec.factor,
                patience=spec.patience, min_lr=spec.min_lr,
            )
        self._apply()

    def _factor(self, step: int) -> float:
        spec = self.spec
        if step < self.warmup_steps:
            return 0.01 + 0.99 * step / self.warmup_steps
        if spec.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * (1 + math.cos(math.pi * progress))
        if spec.name == "step":
            epoch = step // self.steps_per_epoch
            if spec.milestones is not None:
                return spec.gamma ** bisect.bisect_right(spec.milestones, epoch)
            return spec.gamma ** (epoch // spec.step_size)
        return 1.0

    def _apply(self) -> None:
        if self.plateau is not None and self.step_count >= self.warmup_steps:
            if self.step_count == self.warmup_steps and self.warmup_steps > 0:
                # warm-up's last step stops short of the base lr: plateau starts from the base lr itself
                for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                    group["lr"] = base
            return  # plateau owns the lr after warm-up
        factor = self._factor(self.step_count)
        # Cosine decays towards min_lr once warm-up is over; everything else scales the base lr.
        floor = self.spec.min_lr if self.spec.name == "cosine" and self.step_count >= self.warmup_steps else 0.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = floor + (base - floor) * factor

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def end_epoch(self, monitored: float | None) -> None:
        if self.plateau is not None and self.step_count >= self.warmup_steps and monitored is not None:
            self.plateau.step(monitored)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count,
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self._apply()
