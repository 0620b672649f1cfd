"""The model card of an export: what the model is, how it was trained, its test metrics beside
the scratch baseline's, its size, FLOPs and measured latency (and the int8 model's, when made)."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

import torch

from kdengine.train.models import describe

if TYPE_CHECKING:
    from kdengine.recipe import Recipe
    from kdengine.tools.export import ExportReport


def file_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def model_card(report: "ExportReport", recipe: "Recipe", scratch: dict[str, float]) -> str:
    s, t = report.student, report.teacher
    atol, rtol = report.tolerance
    label = "distilled student" if report.stage == "distilled" else report.stage
    dynamic = "batch, height and width dynamic" if report.dense else "batch dimension dynamic"
    lines = [
        f"# {recipe.run.name}: {label} ({report.format})",
        "",
        f"- **Task:** {report.task}",
        f"- **Dataset:** {recipe.data.name}",
        f"- **Stage:** {report.stage}",
        f"- **{'Student' if s.role == 'student' else 'Model'}:** {s.description}",
        f"- **Teacher:** {t.description if t else describe(recipe.teacher) + ' (weights not found)'}",
        "- **Loss:** " + " + ".join(f"{l.weight:g} x {l.name}" for l in recipe.loss),
        f"- **File:** `{report.path.name}`, {file_size(report.file_bytes)}",
        f"- **Input:** {tuple(report.checked_shapes[0][1:])} per image ({dynamic})"
        if report.format == "onnx" else f"- **Input:** {tuple(report.checked_shapes[0][1:])} per image",
        "",
        "## Quality",
        "",
    ]
    metrics = list(dict.fromkeys([*(t.metrics if t else {}), *s.metrics, *scratch]))
    if metrics:
        lines += [f"| test metric (best weights, chosen on val) | teacher | student from scratch | {label} |",
                  "|---|---|---|---|"]
        for name in metrics:
            def cell(values):
                return f"{values[name]:.4f}" if name in values else "n/a"
            mark = " (monitored)" if name == report.monitor else ""
            lines.append(f"| {name}{mark} | {cell(t.metrics if t else {})} | {cell(scratch)} | {cell(s.metrics)} |")
    else:
        lines.append("No results.json in the run folder: no metrics.")
    lines += ["", "## Cost", "",
              f"| | teacher | {'student' if report.stage == 'distilled' else label} |", "|---|---|---|",
              f"| parameters | {t.params:,} | {s.params:,} |" if t else f"| parameters | n/a | {s.params:,} |",
              (f"| forward FLOPs per image | {t.flops_per_image:,} | {s.flops_per_image:,} |" if t
               else f"| forward FLOPs per image | n/a | {s.flops_per_image:,} |")]
    if s.latency:
        def lat(m, attr):
            return "n/a" if m is None or m.latency is None else attr(m.latency)
        lines += [
            f"| CPU latency, batch 1 (PyTorch, median) | {lat(t, lambda l: f'{l.batch_1_ms:.2f} ms')} | {s.latency.batch_1_ms:.2f} ms |",
            f"| CPU throughput, batch {s.latency.throughput_batch} (PyTorch) | "
            f"{lat(t, lambda l: f'{l.images_per_second:.0f} images/s')} | {s.latency.images_per_second:.0f} images/s |",
        ]
    if report.exported_latency_ms is not None:
        runtime = "onnxruntime" if report.format == "onnx" else "TorchScript"
        lines.append(f"| CPU latency, batch 1 ({runtime}, median) | | {report.exported_latency_ms:.2f} ms |")
    lines += [
        "",
        f"Measured on {platform.processor() or platform.machine()} with {torch.get_num_threads()} PyTorch "
        f"{'and onnxruntime ' if report.format == 'onnx' else ''}threads, torch {torch.__version__}; FLOPs by torch.utils.flop_counter (a multiply-add is 2 FLOPs).",
        "",
        "## Export check",
        "",
        f"The exported model was compared with the PyTorch student on batches of shapes "
        f"{', '.join(str(tuple(x)) for x in report.checked_shapes)}: max |difference| = "
        f"{report.max_abs_diff:.3g}, within the tolerance |a - b| <= {atol:g} + {rtol:g} * |b|.",
        "Adapters and projection heads trained by feature losses are not part of the student and are "
        "not exported.",
        "",
    ]
    if report.int8 is not None:
        from kdengine.tools.quantize import card_section

        lines += card_section(report.int8)
    return "\n".join(lines)
