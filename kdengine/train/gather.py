"""One evaluation batch's outputs and targets from every process, each sample once.

Accelerate's ``gather_for_metrics`` concatenates tensors across processes and, at the end of the
split, drops the samples its sampler repeated to give every process a full batch. That is right
for batches of same-size tensors only: a dataset of whole images of different sizes (super-
resolution and BSDS evaluation sets) collates a batch to a Python list of tensors, one per image,
and a tensor gather would concatenate the i-th images of the processes along their channels (or
fail, or on NCCL silently mix pixels of two images with the same number of elements). Batches are
also stacked on one process and listed on another, or stacked to different shapes (a padded
annotator count), so the way to gather is agreed by all processes first.

Such batches travel as Python objects instead (``gather_object``, through the CPU), one piece per
process in process order, and the padding is cut the way Accelerate cuts it: at the end of the
split only the first ``remainder`` samples of the last step are real.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device

#: ``(outputs, targets)`` of one process's share of a step, as the collate function made them.
Piece = tuple[Any, Any]


def layout(data: Any) -> str | None:
    """The shapes and dtypes of every tensor in ``data``, or None when it holds a list (one item
    per sample, as a collate of different-size images makes) or anything that is not a tensor."""
    if isinstance(data, torch.Tensor):
        return f"{tuple(data.shape)}{data.dtype}"
    if isinstance(data, tuple):
        parts = [layout(item) for item in data]
        return None if None in parts else "(" + ",".join(parts) + ")"
    if isinstance(data, dict):
        parts = [layout(data[key]) for key in sorted(data)]
        return None if None in parts else "{" + ",".join(f"{k}:{p}" for k, p in zip(sorted(data), parts)) + "}"
    return None


def same_tensor_layout(accelerator: Accelerator, data: Any) -> bool:
    """Whether every process holds tensors of the same shapes (so a tensor gather is right)."""
    mine = layout(data)
    code = -1 if mine is None else zlib.crc32(mine.encode())  # the same on every process, unlike hash()
    codes = accelerator.gather(torch.tensor([code], dtype=torch.long, device=accelerator.device))
    return bool((codes == code).all()) and code != -1


def count(data: Any) -> int:
    """Samples in a piece: a list's items, or the first dimension of its (first) tensor."""
    if isinstance(data, list):
        return len(data)
    if isinstance(data, torch.Tensor):
        return data.shape[0]
    if isinstance(data, tuple):
        return count(data[0])
    if isinstance(data, dict):
        return count(next(iter(data.values())))
    raise TypeError(f"cannot count the samples of a {type(data).__name__}")


def first(data: Any, rows: int) -> Any:
    """The first ``rows`` samples of a piece: a list holds one item per sample; tensors, and the
    tensors inside tuples and dicts, are cut along their first dimension."""
    if isinstance(data, (list, torch.Tensor)):
        return data[:rows]
    if isinstance(data, tuple):
        return tuple(first(item, rows) for item in data)
    if isinstance(data, dict):
        return {key: first(value, rows) for key, value in data.items()}
    return data


def real_samples(accelerator: Accelerator, pieces: list[Piece]) -> list[Piece]:
    """``pieces`` without the samples the sampler repeated to even out the last step."""
    state = accelerator.gradient_state
    if not state.end_of_dataloader or state.remainder <= 0:
        return pieces
    kept, left = [], state.remainder
    for outputs, targets in pieces:
        if left <= 0:
            break
        rows = min(left, count(outputs))
        kept.append((first(outputs, rows), first(targets, rows)))
        left -= rows
    return kept


def gather_pieces(accelerator: Accelerator, outputs: Any, targets: Any) -> list[Piece]:
    """The step's ``(outputs, targets)`` from every process, repeated samples dropped, as pieces
    to update the metrics with one at a time (a tensor gather gives one piece)."""
    if accelerator.num_processes == 1 or same_tensor_layout(accelerator, (outputs, targets)):
        return [accelerator.gather_for_metrics((outputs, targets))]
    local = send_to_device((outputs, targets), "cpu")  # a CUDA tensor would unpickle on its own GPU
    pieces = gather_object([local])
    return [send_to_device(piece, accelerator.device) for piece in real_samples(accelerator, pieces)]
