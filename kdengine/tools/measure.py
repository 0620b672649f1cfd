"""Measuring an exported model: the split it is scored on, its onnxruntime session, its forward
FLOPs and CPU latency (median of repeated runs)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdengine.errors import KDEngineError


@dataclass
class Latency:
    batch_1_ms: float
    throughput_batch: int
    throughput_ms: float

    @property
    def images_per_second(self) -> float:
        return self.throughput_batch / (self.throughput_ms / 1000)


def count_flops(model: nn.Module, sample: torch.Tensor) -> int:
    """Forward FLOPs for ``sample`` (torch.utils.flop_counter; multiply-adds count as 2)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(sample)
    return counter.get_total_flops()


def measure_ms(call, runs: int, warmup: int = 1) -> float:
    """Median wall time of ``call()`` in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def torch_latency(model: nn.Module, sample: torch.Tensor, throughput_batch: int, runs: int) -> Latency:
    one = sample[:1]
    repeats = -(-throughput_batch // sample.shape[0])
    batch = sample.repeat(repeats, *([1] * (sample.dim() - 1)))[:throughput_batch]
    with torch.inference_mode():
        single = measure_ms(lambda: model(one), runs)
        many = measure_ms(lambda: model(batch), max(1, runs // 3))
    return Latency(single, throughput_batch, many)


# ---------------------------------------------------------------------------------------------
# the formats


#: The name, on the card, of the split that :func:`evaluation_split` returns.
EVALUATION_SPLIT = "test"


def evaluation_split(provider):
    """The split exported models are checked and scored on: the one place that names it."""
    return provider.test_set()


#: What ``--format onnx`` and ``--quantize int8`` tell a user whose install lacks them.
EXPORT_EXTRA = ("needs the export extra (onnx and onnxruntime), which the plain install leaves out: "
                "pip install \"kdengine[export]\" (from a clone: pip install -e \".[export]\")")


def require_export_extra(what: str) -> None:
    """Fail before any work when onnx or onnxruntime is missing, naming the extra to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise KDEngineError(f"{what} {EXPORT_EXTRA}") from None


def onnx_session(path: Path):
    """An onnxruntime CPU session with as many threads as PyTorch uses, so that the latencies
    on the card compare like with like."""
    require_export_extra("--format onnx")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
