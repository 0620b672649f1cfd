"""Contrastive representation distillation: Tian et al., "Contrastive Representation
Distillation", ICLR 2020 — in its InfoNCE form with in-batch (and queued) negatives.

The penultimate features of both networks (any tapped layer, globally average-pooled to a vector)
are embedded by linear heads g_s, g_t and L2-normalised, s_i = g_s(f_s(x_i)) / ||.||,
t_i = g_t(f_t(x_i)) / ||.||. Sample i's teacher embedding is the positive of its student
embedding and every other teacher embedding is a negative, and symmetrically:

    L = 1/2 * [ CE(S T'^T / tau, diag) + CE(T S'^T / tau, diag) ]

where CE(logits, diag) = -1/B sum_i log softmax_j(logits)[i, i], T' is the batch's teacher
embeddings followed by the memory of negatives, S' likewise for the student.

**Variant, stated plainly.** The paper's objective is a binary NCE against a memory bank of 16,384
negatives indexed by dataset sample index (each sample's momentum-updated embedding lives at its
index). kdengine batches are ``(input, target)`` pairs with no sample indices, so this term
implements the softmax InfoNCE objective (van den Oord et al. 2018), which the CRD paper also
reports, with the other samples of the batch as negatives. ``queue_size`` > 0 adds a FIFO memory of
the most recent ``queue_size`` detached embeddings of each network as extra negatives (MoCo-style,
He et al. 2020); it needs no indices, and with a frozen teacher the queued teacher embeddings
only drift through the small head. ``queue_size = 0`` is pure in-batch InfoNCE. The heads are
created in ``setup`` and dropped at export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdengine import KDEngineError, LossContext, LossTerm, Params

from kdengine_classification.kd_methods._common import pooled_vector


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, extra_negatives: torch.Tensor | None,
             temperature: float) -> torch.Tensor:
    """-1/B sum_i log( exp(a_i.p_i / tau) / sum_j exp(a_i.c_j / tau) ), c = [positives; negatives]."""
    candidates = positives if extra_negatives is None else torch.cat([positives, extra_negatives])
    logits = anchors @ candidates.t() / temperature
    labels = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, labels)


class ContrastiveRepresentation(LossTerm):
    """CRD (Tian et al., ICLR 2020), InfoNCE variant with in-batch negatives (+ an optional FIFO memory; no sample indices needed)."""

    needs_teacher = True
    #: The other samples of the batch are the negatives.
    per_sample = False

    class Params(Params):
        student_layer: str = Field(min_length=1, description="module path of the student's penultimate feature")
        teacher_layer: str = Field(min_length=1, description="module path of the teacher's penultimate feature")
        feature_dim: int = Field(128, ge=2, description="embedding size of both heads")
        temperature: float = Field(0.07, gt=0)
        #: Past embeddings kept as extra negatives (0: in-batch negatives only).
        queue_size: int = Field(0, ge=0)

    def __init__(self, params=None):
        super().__init__(params)
        self.student_head: nn.Module | None = None
        self.teacher_head: nn.Module | None = None
        q, d = self.params.queue_size, self.params.feature_dim
        # Persistent: the queue and its pointer are training state, saved with the objective for
        # an exact resume (the exported weights hold the student alone, never its loss terms).
        self.register_buffer("queue_student", torch.zeros(q, d))
        self.register_buffer("queue_teacher", torch.zeros(q, d))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))

    def student_taps(self) -> list[str]:
        return [self.params.student_layer]

    def teacher_taps(self) -> list[str]:
        return [self.params.teacher_layer]

    def _vectors(self, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            student = ctx.student_features[self.params.student_layer]
            teacher = ctx.teacher_features[self.params.teacher_layer]
        except KeyError as exc:
            raise KDEngineError(f"crd: no tapped feature {exc} in the loss context") from None
        return pooled_vector(student.float()), pooled_vector(teacher.float())

    def setup(self, ctx: LossContext) -> None:
        student, teacher = self._vectors(ctx)
        dim = self.params.feature_dim
        self.student_head = nn.Linear(student.shape[1], dim).to(student.device)
        self.teacher_head = nn.Linear(teacher.shape[1], dim).to(teacher.device)

    def embed(self, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The L2-normalised student and teacher embeddings of the batch, (B, feature_dim) each."""
        if self.student_head is None:
            raise KDEngineError("crd: setup(ctx) must run before the first forward (it creates the heads)")
        student, teacher = self._vectors(ctx)
        s = F.normalize(self.student_head(student).float(), dim=1)
        t = F.normalize(self.teacher_head(teacher).float(), dim=1)
        return s, t

    def forward(self, ctx: LossContext) -> torch.Tensor:
        s, t = self.embed(ctx)
        filled = int(self.queue_filled)
        queued_s = self.queue_student[:filled] if filled else None
        queued_t = self.queue_teacher[:filled] if filled else None
        tau = self.params.temperature
        loss = 0.5 * (info_nce(s, t, queued_t, tau) + info_nce(t, s, queued_s, tau))
        if self.training and self.params.queue_size > 0:
            self._enqueue(s.detach(), t.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, s: torch.Tensor, t: torch.Tensor) -> None:
        size = self.params.queue_size
        s, t = s[-size:], t[-size:]
        slots = (int(self.queue_next) + torch.arange(s.shape[0], device=s.device)) % size
        self.queue_student[slots] = s.to(self.queue_student.dtype)
        self.queue_teacher[slots] = t.to(self.queue_teacher.dtype)
        self.queue_next.fill_((int(self.queue_next) + s.shape[0]) % size)
        self.queue_filled.fill_(min(size, int(self.queue_filled) + s.shape[0]))
