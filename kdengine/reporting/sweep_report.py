"""A sweep's report: ``sweep.md`` (one row per point, the teacher's row first) and ``sweep.png``
(the Pareto figure: the metric against parameters and against measured CPU latency)."""

from __future__ import annotations

from pathlib import Path

from kdengine.io.atomic import atomic_write_text
from kdengine.reporting.figures import pyplot
from kdengine.reporting.sweep_results import SweepPoint, SweepResult
from kdengine.reporting.tables import format_params, format_value, markdown_table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def sweep_table(result: SweepResult) -> str:
    """The points as a Markdown table: the axes' values, parameters, the distilled and scratch
    students' metric, and the exported student's latency (fp32, int8) and int8 metric."""
    monitor = result.monitor
    header = ["point", *[axis.key for axis in result.grid], "params", f"{monitor} distilled", f"{monitor} scratch",
              "fp32 ms"]
    if result.measure.quantize:
        header += ["int8 ms", f"{monitor} int8"]
    header.append("status")
    rows = []
    teacher = result.teacher
    if teacher is not None:
        row = ["teacher", *["-"] * len(result.grid), format_params(teacher.params),
               format_value(teacher.metric), "", ""]
        rows.append(row + (["", ""] if result.measure.quantize else []) + [teacher.origin])
    for point in result.points:
        row = [point.label, *[str(point.values.get(axis.key, "")) for axis in result.grid],
               format_params(point.params) if point.params is not None else "-", format_value(point.metric),
               format_value(point.scratch_metric), _ms(point.latency_ms.get("fp32"))]
        if result.measure.quantize:
            row += [_ms(point.latency_ms.get("int8")), format_value(point.int8_metric)]
        rows.append(row + [point.status])
    return markdown_table(header, rows)


def write_sweep_markdown(result: SweepResult, folder: Path) -> Path:
    measure = result.measure
    lines = [f"# {result.name}: compression sweep", "", sweep_table(result), "",
             f"Metrics: {result.monitor} on the {result.split} split, with each stage's val-best weights. "
             f"Latency: the exported student in onnxruntime on the CPU, batch 1, median of {measure.latency_runs} "
             f"runs, {measure.threads} thread(s). The scratch student has the distilled one's architecture, "
             "hence its latency.", ""]
    teacher = f"Teacher: {result.teacher.model} ({result.teacher.origin}). " if result.teacher is not None else ""
    lines += [teacher + result.teacher_note, ""]
    lines += [f"Command: `{result.command}`" + (f" (git {result.git_revision})" if result.git_revision else "")]
    path = Path(folder) / "sweep.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def pareto_front(xs: list[float], ys: list[float], higher_is_better: bool) -> list[int]:
    """The points that no other point beats on both counts (smaller x, better y), by x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i] if higher_is_better else ys[i]))
    front, best = [], None
    for i in order:
        if best is None or (ys[i] > best if higher_is_better else ys[i] < best):
            front.append(i)
            best = ys[i]
    return front


def _series(ax, points: list[SweepPoint], x_of, y_of, higher: bool, style: dict, label: str) -> None:
    """One kind of point, every one marked and the non-dominated ones joined as a front."""
    kept = [(x_of(p), y_of(p), p) for p in points if x_of(p) is not None and y_of(p) is not None]
    if not kept:
        return
    xs, ys = [k[0] for k in kept], [k[1] for k in kept]
    ax.scatter(xs, ys, label=label, **style)
    front = pareto_front(xs, ys, higher)
    if style.get("marker") != "x":
        ax.plot([xs[i] for i in front], [ys[i] for i in front], color=style.get("color"), linewidth=1.2)


def plot_sweep(result: SweepResult, path: Path) -> Path | None:
    """Two panels: the metric against parameters, and against measured CPU latency (fp32 and
    int8 as two marker styles). Distilled points are joined as a front; scratch points are crosses;
    the teacher is a dashed line."""
    done = [p for p in result.points if p.status == "done"]
    if not done:
        return None
    plt = pyplot()
    higher = result.higher_is_better
    fig, (by_params, by_latency) = plt.subplots(1, 2, figsize=(10, 4))
    distilled = {"marker": "o", "color": "#1f77b4"}
    scratch = {"marker": "x", "color": "#7f7f7f"}
    _series(by_params, done, lambda p: p.params, lambda p: p.metric, higher, distilled, "distilled")
    _series(by_params, done, lambda p: p.params, lambda p: p.scratch_metric, higher, scratch, "scratch")
    fp32 = lambda p: p.latency_ms.get("fp32")  # noqa: E731
    _series(by_latency, done, fp32, lambda p: p.metric, higher, distilled, "distilled, fp32")
    _series(by_latency, done, lambda p: p.latency_ms.get("int8"), lambda p: p.int8_metric, higher,
            {"marker": "s", "color": "#ff7f0e"}, "distilled, int8")
    _series(by_latency, done, fp32, lambda p: p.scratch_metric, higher, scratch, "scratch (fp32)")
    for point in done:
        if point.params is not None and point.metric is not None:
            by_params.annotate(point.label.split("-", 1)[0], (point.params, point.metric), fontsize=7,
                               textcoords="offset points", xytext=(4, 4))
    teacher = result.teacher
    if teacher is not None and teacher.metric is not None:
        for ax in (by_params, by_latency):
            ax.axhline(teacher.metric, color="#d62728", linestyle="--", linewidth=1,
                       label=f"teacher ({format_params(teacher.params)} params)")
    ylabel = f"{result.monitor} ({result.split}, val-best weights)"
    by_params.set(xscale="log", xlabel="parameters", ylabel=ylabel, title="metric against size")
    by_latency.set(xlabel=f"CPU latency, batch 1 (ms, onnxruntime, {result.measure.threads} thread(s))",
                   ylabel=ylabel, title="metric against measured latency")
    for ax in (by_params, by_latency):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result.name}: compression sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
