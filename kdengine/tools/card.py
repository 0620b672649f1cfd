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
    from kdengine.tools.quantize import Int8Report


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
        "- **Loss:** " + " + ".join(f"{l.weight if l.weight == 'auto' else format(l.weight, 'g')} x {l.name}"
                                   for l in recipe.loss),
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
        lines += card_section(report.int8)
    return "\n".join(lines)


def card_section(report: "Int8Report") -> list[str]:
    """The model card's int8 section: fp32 and int8 side by side."""
    fp32, int8 = report.fp32, report.int8
    s = report.settings
    lines = [
        "## int8",
        "",
        f"`{int8.file}`: static quantisation, {s['format']}; weights {s['weights']}; activations "
        f"{s['activations']}; {s['calibration']} ranges calibrated on {report.calibration_images} images of "
        "the train split (without the batch augmentation of training). Both models run in onnxruntime "
        f"(CPUExecutionProvider) and are scored with the recipe's metrics on the {report.split} split.",
        "",
        "| | fp32 | int8 | drop |",
        "|---|---|---|---|",
    ]
    for name, before in fp32.metrics.items():
        if name not in int8.metrics:
            continue
        mark = " (over --max-drop)" if name in report.exceeded() else ""
        lines.append(f"| {name} ({report.split}) | {before:.4f} | {int8.metrics[name]:.4f} | "
                     f"{report.drops[name]:.4f}{mark} |")
    ratio = int8.file_bytes / fp32.file_bytes
    a, b = fp32.latency, int8.latency
    lines += [
        f"| file size | {file_size(fp32.file_bytes)} | {file_size(int8.file_bytes)} | x{ratio:.2f} |",
        f"| CPU latency, batch 1 (onnxruntime, median) | {a.batch_1_ms:.2f} ms | {b.batch_1_ms:.2f} ms | "
        f"x{b.batch_1_ms / a.batch_1_ms:.2f} |",
        f"| CPU latency, batch {a.throughput_batch} (onnxruntime, median) | {a.throughput_ms:.1f} ms "
        f"({a.images_per_second:.0f} images/s) | {b.throughput_ms:.1f} ms ({b.images_per_second:.0f} images/s) | "
        f"x{b.throughput_ms / a.throughput_ms:.2f} |",
        "",
        "A drop is fp32 minus int8 for metrics where higher is better (int8 minus fp32 otherwise), in the "
        "metric's own unit; a ratio below 1 is smaller or faster.",
        f"On the sample images ({', '.join(str(tuple(x)) for x in report.compared_shapes)}) the int8 outputs "
        f"differ from the fp32 ones by at most {report.max_abs_diff:.3g} (largest |fp32 output| "
        f"{report.max_abs_output:.3g}); it returns the fp32 model's output shapes on every check batch.",
        "",
    ]
    for name, drop in report.exceeded().items():
        lines += [f"**Warning:** int8 {name} drops by {drop:.4g} from fp32, more than the allowed "
                  f"{report.max_drop[name]:g}.", ""]
    return lines
