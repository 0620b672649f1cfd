"""PKT — Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018).

The student matches the teacher's distribution of pairwise similarities within the batch. Each
embedding (a tapped layer, globally average-pooled to a vector, or the logits when no layer is
given) is L2-normalised, x_i <- x_i / ||x_i||_2, and compared with a cosine kernel shifted to [0, 1]:

    K(x_i, x_j) = (cos(x_i, x_j) + 1) / 2 = (<x_i, x_j> + 1) / 2

The kernel values of each row become conditional probabilities over the other samples:

    p_{j|i} = K(x_i, x_j) / sum_{k != i} K(x_i, x_k)        (j != i)

computed for the teacher (p^t) and the student (p^s), and the loss is the Kullback-Leibler
divergence of the student's from the teacher's, averaged over the anchors i:

    L_PKT = 1/B * sum_i sum_{j != i} p^t_{j|i} * log( (p^t_{j|i} + eps) / (p^s_{j|i} + eps) ),  eps = 1e-7

As in the paper, a sample is not its own neighbour (j != i). The paper sums over the anchors; the
mean keeps the weight independent of the batch size. The authors' code keeps the diagonal in the
rows and averages over all B^2 entries. The embedding sizes of the two networks may differ. A
batch of fewer than two samples has no neighbours and gives 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdengine import LossContext, LossTerm

from kdengine_classification.kd_methods.rkd import EmbeddingLayers, embeddings

#: Keeps the logarithm finite where a kernel value is 0 (opposite embeddings).
EPS = 1e-7


def conditional_probabilities(x: torch.Tensor) -> torch.Tensor:
    """(B, B) p_{j|i} of the cosine kernel on (B, D) embeddings; the diagonal is 0."""
    x = F.normalize(x.float(), p=2, dim=1, eps=1e-12)
    kernel = (x @ x.t() + 1.0) / 2.0
    self_pairs = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    kernel = kernel.masked_fill(self_pairs, 0.0)
    return kernel / kernel.sum(dim=1, keepdim=True).clamp_min(EPS)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over the anchors of KL(p^t_{.|i} || p^s_{.|i}) between (B, D_s) and (B, D_t) embeddings."""
    if student.shape[0] < 2:
        return student.sum() * 0.0
    p_s = conditional_probabilities(student)
    p_t = conditional_probabilities(teacher.detach())
    return (p_t * (torch.log(p_t + EPS) - torch.log(p_s + EPS))).sum(dim=1).mean()


class ProbabilisticKT(LossTerm):
    """PKT (Passalis & Tefas, ECCV 2018): KL between the teacher's and the student's cosine-kernel
    neighbour probabilities within the batch."""

    needs_teacher = True
    #: Each sample's probabilities are over the other samples of the batch.
    per_sample = False

    class Params(EmbeddingLayers):
        pass

    def student_taps(self) -> list[str]:
        return [self.params.student_layer] if self.params.student_layer else []

    def teacher_taps(self) -> list[str]:
        return [self.params.teacher_layer] if self.params.teacher_layer else []

    def forward(self, ctx: LossContext) -> torch.Tensor:
        student, teacher = embeddings(ctx, "pkt", self.params.student_layer, self.params.teacher_layer)
        return pkt_loss(student, teacher)
