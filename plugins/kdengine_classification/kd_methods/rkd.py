"""RKD — Relational Knowledge Distillation (Park et al., CVPR 2019).

The student learns how the teacher's embeddings of a batch relate to each other rather than the
embeddings themselves. With t_i the teacher's and s_i the student's embedding of sample i (a
tapped layer, globally average-pooled to a vector, or the logits when no layer is given):

    distance-wise:  psi_D(x_i, x_j) = ||x_i - x_j||_2 / mu,   mu = mean_{i != j} ||x_i - x_j||_2
                    L_D = mean_{i != j} huber(psi_D(s_i, s_j) - psi_D(t_i, t_j))

    angle-wise:     psi_A(x_i, x_j, x_k) = < (x_i - x_j) / ||x_i - x_j||, (x_k - x_j) / ||x_k - x_j|| >
                    (the cosine of the angle at x_j), for distinct i, j, k
                    L_A = mean_{i, j, k distinct} huber(psi_A(s_i, s_j, s_k) - psi_A(t_i, t_j, t_k))

    L_RKD = distance_weight * L_D + angle_weight * L_A

with huber(x) = x^2 / 2 for |x| <= 1 and |x| - 1/2 otherwise (delta = 1, PyTorch's smooth L1).
mu is computed for each network on its own embeddings, so the embedding sizes may differ.
The defaults (25, 50) are the paper's. The sums of the paper run over the distinct pairs and
triplets of the batch; they are averaged here (mean over the pairs i != j and over the triplets
of distinct samples), so the weights do not change with the batch size. The authors' code averages
over all B^2 pairs and B^3 triplets, degenerate ones included; that differs by a factor B / (B - 1)
(distances) or about B^2 / ((B - 1)(B - 2)) (angles).

Distances and cosines come from the Gram matrix of the batch-centred embeddings
(||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij, <x_i - x_j, x_k - x_j> = G_ik - G_ij - G_jk + G_jj), so
the angles need B^3 numbers, not B^2 * D. A batch of fewer than two samples (three for the
angles) has no relation to match and gives 0 for that part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from kdengine import KDEngineError, LossContext, LossTerm, Params

from kdengine_classification.kd_methods._common import pooled_vector

#: Floor of squared distances, so coinciding samples give finite values and gradients.
_EPS = 1e-12


def raw_feature(ctx: LossContext, method: str, role: str, path: str | None) -> torch.Tensor:
    """The student's or teacher's tapped feature at ``path`` (its logits when ``path`` is None), as
    float32; the teacher's is detached, so no gradient ever reaches it."""
    if path is None:
        value = ctx.student if role == "student" else ctx.teacher
        if not isinstance(value, torch.Tensor):
            raise KDEngineError(f"{method}: the loss context has no {role} output")
    else:
        features = ctx.student_features if role == "student" else ctx.teacher_features
        if path not in features:
            raise KDEngineError(
                f"{method}: no {role} feature at '{path}' in the loss context; the term asks for it "
                f"through {role}_taps(), so the engine should have tapped it"
            )
        value = features[path]
    value = value.float()
    return value if role == "student" else value.detach()


def embeddings(ctx: LossContext, method: str, student_layer: str | None,
               teacher_layer: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D_s) student and (B, D_t) detached teacher vectors: pooled tapped features, or logits."""
    student = pooled_vector(raw_feature(ctx, method, "student", student_layer))
    teacher = pooled_vector(raw_feature(ctx, method, "teacher", teacher_layer))
    if student.shape[0] != teacher.shape[0]:
        raise KDEngineError(f"{method}: the student has {student.shape[0]} samples, the teacher {teacher.shape[0]}")
    return student, teacher


class EmbeddingLayers(Params):
    """Which layers' pooled outputs are the embeddings: both given, or neither (the logits)."""

    student_layer: str | None = Field(
        None, min_length=1,
        description="module path of the student layer whose pooled output is its embedding; "
                    "None (with teacher_layer None): the logits")
    teacher_layer: str | None = Field(
        None, min_length=1,
        description="module path of the teacher layer whose pooled output is its embedding; "
                    "None (with student_layer None): the logits")

    @model_validator(mode="after")
    def _both_or_neither(self):
        if (self.student_layer is None) != (self.teacher_layer is None):
            raise ValueError("give both student_layer and teacher_layer, or neither (the logits)")
        return self


def _gram_and_distances(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram matrix of the batch-centred rows of ``x`` and their pairwise distances (B x B)."""
    x = x - x.mean(dim=0, keepdim=True)  # distances and angles do not move; the Gram's cancellation shrinks
    gram = x @ x.t()
    norms = gram.diagonal()
    squared = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(_EPS)
    return gram, squared.sqrt()


def distance_potentials(distances: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """psi_D over the pairs selected by the (B, B) mask ``pairs``: distances over their mean."""
    selected = distances[pairs]
    return selected / selected.mean().clamp_min(_EPS)


def angle_potentials(gram: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """cos[j, i, k]: the cosine of the angle at sample j between samples i and k, (B, B, B)."""
    diagonal = gram.diagonal()
    dots = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diagonal[:, None, None]
    return dots / (distances[:, :, None] * distances[:, None, :])


def rkd_parts(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_D, L_A) between (B, D_s) student and (B, D_t) teacher embeddings."""
    batch = student.shape[0]
    zero = student.sum() * 0.0  # keeps the graph for a batch too small to relate
    if batch < 2:
        return zero, zero
    gram_s, dist_s = _gram_and_distances(student.float())
    gram_t, dist_t = _gram_and_distances(teacher.float().detach())
    index = torch.arange(batch, device=student.device)
    pairs = index[:, None] != index[None, :]
    distance = F.smooth_l1_loss(distance_potentials(dist_s, pairs), distance_potentials(dist_t, pairs), beta=1.0)
    if batch < 3:
        return distance, zero
    triplets = pairs[:, :, None] & pairs[:, None, :] & pairs[None, :, :]  # j != i, j != k, i != k
    angle = F.smooth_l1_loss(angle_potentials(gram_s, dist_s)[triplets], angle_potentials(gram_t, dist_t)[triplets],
                             beta=1.0)
    return distance, angle


class RelationalKD(LossTerm):
    """RKD (Park et al., CVPR 2019): Huber losses between the student's and the teacher's normalised
    pairwise distances and triplet angles over the batch."""

    needs_teacher = True
    #: Every relation compares samples of the batch with each other.
    per_sample = False

    class Params(EmbeddingLayers):
        distance_weight: float = Field(25.0, ge=0, description="weight of the distance-wise loss (the paper's 25)")
        angle_weight: float = Field(50.0, ge=0, description="weight of the angle-wise loss (the paper's 50)")

    def student_taps(self) -> list[str]:
        return [self.params.student_layer] if self.params.student_layer else []

    def teacher_taps(self) -> list[str]:
        return [self.params.teacher_layer] if self.params.teacher_layer else []

    def forward(self, ctx: LossContext) -> torch.Tensor:
        p = self.params
        student, teacher = embeddings(ctx, "rkd", p.student_layer, p.teacher_layer)
        distance, angle = rkd_parts(student, teacher)
        return p.distance_weight * distance + p.angle_weight * angle
