"""CTKD: Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023.

The KD temperature is learned, adversarially: the student minimises the KD loss while the
temperature maximises it, through a gradient reversal layer (GRL) between the temperature and the
loss. The reversal's strength lambda grows from 0 to 1 on a cosine schedule, so the task goes from
easy to hard (a curriculum):

    L = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch
    forward: T as it is;  backward: dL/dT is multiplied by -lambda_n
    lambda_n = lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * min(n, N) / N)) / 2

The student's gradient is the ordinary gradient of L at the current T. The temperature is one
global, learnable parameter owned by the term (trained by the recipe's optimizer with the
student), kept within (t_min, t_max) as in the authors' code by a sigmoid:
T = t_min + (t_max - t_min) * sigmoid(theta). Defaults are the authors' CIFAR-100 setting:
range (1, 21) (their t_start = 1, t_end = 20) and theta = 1 at the start, i.e. T ~ 15.6;
``init_temperature`` sets another start.

Stated difference: the paper schedules lambda by epoch (lambda_min = 0, lambda_max = 1 over 10
epochs, counted from 1). A loss term does not know the epoch, so it counts its own training-mode
forward passes in a buffer (saved and resumed with the run) and ramps over ``ramp_steps`` of them:
10 epochs of CIFAR-100 at batch 128 are about 3500-4000 steps (the default is 4000). The count
starts at 1, so the temperature gets a (small) gradient from the first step, as in the authors'
code. Under ``train.max_memory`` every micro-batch counts as a step. Evaluation does not count.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator

from kdengine import LossContext, LossTerm, Params
from kdengine_classification.losses import hinton_kd


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by -scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * -ctx.scale, None


def reverse_gradient(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    return _ReverseGradient.apply(x, scale)


def cosine_lambda(step: int, ramp_steps: int, lambda_min: float = 0.0, lambda_max: float = 1.0) -> float:
    """The GRL strength after ``step`` counted steps: lambda_min at 0, lambda_max from ramp_steps on."""
    progress = min(max(step, 0), ramp_steps) / ramp_steps
    return lambda_min + (lambda_max - lambda_min) * (1.0 - math.cos(math.pi * progress)) / 2.0


class CurriculumTemperatureKD(LossTerm):
    """CTKD (Li et al., AAAI 2023): KD at a learned global temperature that ascends the loss through gradient reversal."""

    needs_teacher = True

    class Params(Params):
        t_min: float = Field(1.0, gt=0, description="lower bound of the learned temperature")
        t_max: float = Field(21.0, gt=0, description="upper bound of the learned temperature")
        init_temperature: float | None = Field(
            None, description="starting temperature, strictly inside (t_min, t_max); None: the authors' "
                              "start, t_min + (t_max - t_min) * sigmoid(1)")
        ramp_steps: int = Field(4000, ge=1, description="training steps over which lambda rises (cosine)")
        lambda_min: float = Field(0.0, ge=0, description="gradient reversal strength at the start")
        lambda_max: float = Field(1.0, ge=0, description="gradient reversal strength after ramp_steps")

        @model_validator(mode="after")
        def _bounds(self):
            if self.t_max <= self.t_min:
                raise ValueError("t_max must be greater than t_min")
            if self.init_temperature is not None and not self.t_min < self.init_temperature < self.t_max:
                raise ValueError("init_temperature must lie strictly between t_min and t_max")
            return self

    def __init__(self, params=None):
        super().__init__(params)
        p = self.params
        if p.init_temperature is None:
            theta = 1.0
        else:
            fraction = (p.init_temperature - p.t_min) / (p.t_max - p.t_min)
            theta = math.log(fraction / (1.0 - fraction))
        #: The temperature's unconstrained parameter theta: T = t_min + (t_max - t_min) * sigmoid(theta).
        self.theta = torch.nn.Parameter(torch.tensor(theta, dtype=torch.float32))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def temperature_from(self, theta: torch.Tensor) -> torch.Tensor:
        p = self.params
        return p.t_min + (p.t_max - p.t_min) * torch.sigmoid(theta)

    @property
    def temperature(self) -> float:
        """The current temperature, as a number."""
        return float(self.temperature_from(self.theta.detach()))

    def current_lambda(self) -> torch.Tensor:
        """:func:`cosine_lambda` at the counted steps, computed on the device (no host sync)."""
        p = self.params
        progress = self.steps.clamp(max=p.ramp_steps).float() / p.ramp_steps
        return p.lambda_min + (p.lambda_max - p.lambda_min) * (1.0 - torch.cos(math.pi * progress)) / 2.0

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.steps += 1
        theta = reverse_gradient(self.theta, self.current_lambda().detach())
        t = self.temperature_from(theta)
        return hinton_kd(ctx.student, ctx.teacher.detach(), t)
