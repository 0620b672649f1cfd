"""Top-k storage of a classification teacher's logits in the cache (``teacher.cache_topk = k``).

Per row the cache keeps the k largest logits, their classes, and the log-sum-exp of the whole
row: 2k + 1 numbers instead of one per class. Reading rebuilds a full row of logits: the k are the
teacher's own, and every other class gets the one value ``f`` that gives the classes left out,
together, the probability the teacher gave them at T = 1, shared evenly::

    p_i = exp(z_i - lse) for the top k,    r = 1 - sum_i p_i,    f = lse + log(r / (C - k))

The rebuilt row's log-sum-exp is then the teacher's ``lse`` again, so its softmax at T = 1 gives
the top-k classes exactly the teacher's probabilities and the rest exactly the teacher's total. A
left-out class never overtakes a top-k one: each left-out p_j is at most the k-th largest, and so
is their mean. At a temperature T > 1 the top-k logits keep their exact differences (so their
probability ratios are the teacher's), and the flat tail approximates the teacher's uneven one.

Why not the simpler fill, the smallest top-k logit minus a margin: the mass it leaves the other
classes depends on the margin and on their number, not on the teacher, so a confident teacher and
an unsure one with the same top-k order would teach the same tail. The fill above keeps how sure
the teacher was, for one number per row (the log-sum-exp).

Only 2-D logits (batch, classes) can be stored so; dense outputs and tapped features cannot.
"""

from __future__ import annotations

import torch

#: The stored arrays, beside each other in an epoch's folder.
VALUES, CLASSES, LSE = "output-topk-values", "output-topk-classes", "output-lse"


def topk_problem(output_shape: tuple[int, ...] | None, feature_paths: list[str]) -> str | None:
    """Why ``teacher.cache_topk`` cannot store these teacher outputs (None when it can; an
    ``output_shape`` of None is not known yet)."""
    if output_shape is not None and len(output_shape) != 2:
        return (f"teacher.cache_topk: the teacher's output has shape {tuple(output_shape)}; top-k storage "
                "keeps classification logits (batch, classes) only, not dense outputs; drop cache_topk")
    if feature_paths:
        return (f"teacher.cache_topk: the loss terms tap teacher features ({', '.join(feature_paths)}), which "
                "top-k storage cannot hold; drop cache_topk or the feature terms")
    return None


def class_dtype(num_classes: int) -> torch.dtype:
    """The smallest integer type that holds every class index: with 2-byte logits a class index of
    4 bytes would cost twice its logit, and top-3 of 10 classes would then take more disk than all 10."""
    if num_classes <= 256:
        return torch.uint8
    return torch.int16 if num_classes <= 2 ** 15 else torch.int32


def encode(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The arrays stored for a batch of logits (B, C): the top ``min(k, C)`` logits, their classes
    (in :func:`class_dtype`) and each row's log-sum-exp, computed in float32 before any rounding to
    the cache's type."""
    logits = logits.float()
    values, classes = logits.topk(min(k, logits.shape[1]), dim=1)
    return {VALUES: values, CLASSES: classes.to(class_dtype(logits.shape[1])), LSE: torch.logsumexp(logits, dim=1)}


def decode(values: torch.Tensor, classes: torch.Tensor, lse: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Full float32 logits (B, C) rebuilt from the stored top-k (see the module's notes)."""
    values, lse = values.float(), lse.float()
    rows, k = values.shape
    if k == num_classes:  # every class was kept: nothing to fill
        fill = torch.zeros(rows, device=values.device)
    else:
        kept = torch.exp(values - lse[:, None]).sum(dim=1)
        # Rounding to float16 can push the kept mass to 1 or above: the tail then gets almost none.
        rest = (1.0 - kept).clamp_min(torch.finfo(torch.float32).tiny)
        fill = lse + torch.log(rest / (num_classes - k))
    logits = fill[:, None].expand(rows, num_classes).clone()
    return logits.scatter_(1, classes.long(), values)
