"""OFD: Heo et al., ICCV 2019, "A Comprehensive Overhaul of Feature Distillation".

The teacher's feature is taken before its ReLU, where the negative responses still carry
information, and passed through a margin ReLU; the student's through a connector r (a 1x1
convolution and a BatchNorm, to the teacher's channels). With m_c the margin of teacher channel c:

    sigma_m(t)  = max(t, m_c)                       m_c = E[t_c | t_c < 0]   (a negative number)
    r(s)        = BN(conv1x1(s))
    d_p(T, S)   = sum_i  0                  if S_i <= T_i and T_i <= 0
                         (T_i - S_i)^2      otherwise
    L_OFD       = sum_pairs 1/B * d_p(sigma_m(t), r(s))

The partial L2 d_p does not push the student below a teacher response that the ReLU would zero
anyway. **Normalisation:** d_p is summed over channels and positions and divided by the batch size
B, as in the paper's Eq. (4)-(6) and the authors' code; their code further divides by 1000 and
weights earlier stages by 2^-(n - i), both of which belong to the recipe's weights here (a weight
of about 1e-3 for one pair reproduces their scale). Because the sum runs over every element, the
value grows with the size of the feature map.

**The margin** is the expectation of each channel's negative responses. The paper computes it in
closed form from the preceding BatchNorm's statistics, assuming Gaussian responses; this term
estimates it directly from the teacher feature of the first batch, in ``setup``: the mean of the
negative values of each channel over batch and positions (0 for a channel with none, which makes
sigma_m a plain ReLU there). It is stored as a buffer, saved with the run's training state and not
trained. Tap the teacher's pre-activation output (the BatchNorm before a ReLU, or a block whose
output has no final ReLU, such as MobileNetV2's linear bottlenecks); a post-ReLU tap has no
negative values, so the margin is 0 and the loss is a plain L2 against it. The connector is
created in ``setup``, trained with the student and dropped at export; when grids differ its
output is brought to the teacher's grid (pooled when larger, interpolated when smaller).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from kdengine import KDEngineError, LossContext, LossTerm, Params

from kdengine_classification.kd_methods._common import resize_to
from kdengine_classification.kd_methods.vid import named_map, through


def negative_mean(teacher: torch.Tensor) -> torch.Tensor:
    """E[t_c | t_c < 0] of each channel of a (B, C, H, W) map, (C,); 0 where a channel has no negative value."""
    negative = (teacher < 0).float()
    count = negative.sum(dim=(0, 2, 3))
    total = (teacher * negative).sum(dim=(0, 2, 3))
    return torch.where(count > 0, total / count.clamp_min(1.0), torch.zeros_like(total))


def connector(in_channels: int, out_channels: int) -> nn.Sequential:
    """r(s): a 1x1 convolution and a BatchNorm, as in the paper."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                         nn.BatchNorm2d(out_channels))


def partial_l2(target: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """sum over elements of (target - student)^2, skipping where student <= target <= 0, divided by B."""
    skip = (student <= target) & (target <= 0)
    squared = (target - student) ** 2
    return torch.where(skip, torch.zeros_like(squared), squared).sum() / target.shape[0]


class OverhaulFeature(LossTerm):
    """OFD (Heo et al., ICCV 2019): partial L2 between a margin-ReLU'd pre-ReLU teacher feature and a connected student feature."""

    needs_teacher = True
    #: The connector's BatchNorm normalises with the batch's statistics.
    per_sample = False

    class Params(Params):
        #: (student layer, teacher layer) module paths; the teacher's taken before its ReLU.
        pairs: list[tuple[str, str]] = Field(min_length=1, description="(student layer, pre-ReLU teacher layer) pairs")

    def __init__(self, params=None):
        super().__init__(params)
        self.connectors: nn.ModuleList | None = None

    def student_taps(self) -> list[str]:
        return [s for s, _ in self.params.pairs]

    def teacher_taps(self) -> list[str]:
        return [t for _, t in self.params.pairs]

    def setup(self, ctx: LossContext) -> None:
        connectors = []
        for i, (student_layer, teacher_layer) in enumerate(self.params.pairs):
            student = named_map(ctx, "student", student_layer, "ofd")
            teacher = named_map(ctx, "teacher", teacher_layer, "ofd")
            connectors.append(connector(student.shape[1], teacher.shape[1]).to(student.device))
            self.register_buffer(f"margin_{i}", negative_mean(teacher.detach()).view(1, -1, 1, 1))
        self.connectors = nn.ModuleList(connectors)

    def margin(self, i: int) -> torch.Tensor:
        """m of pair ``i``, (1, C_t, 1, 1)."""
        return getattr(self, f"margin_{i}")

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if self.connectors is None:
            raise KDEngineError("ofd: setup(ctx) must run before the first forward (it creates the connectors "
                                "and estimates the margins)")
        total = 0.0
        for i, ((student_layer, teacher_layer), connect) in enumerate(zip(self.params.pairs, self.connectors)):
            student = named_map(ctx, "student", student_layer, "ofd")
            teacher = named_map(ctx, "teacher", teacher_layer, "ofd").detach()
            target = torch.maximum(teacher, self.margin(i).float())
            connected = resize_to(through(connect, student), tuple(teacher.shape[-2:]))
            total = total + partial_l2(target, connected)
        return total
