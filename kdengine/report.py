"""Results tables and figures: ``results.md``, ``curves.png``."""

from __future__ import annotations

from pathlib import Path

from kdengine.checkpoint import atomic_write_text
from kdengine.results import Results, StageResult

STAGE_LABELS = {"teacher": "teacher", "scratch": "student (scratch)", "distilled": "student (distilled)"}


def format_params(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def results_table(results: Results) -> str:
    """Model, the monitored metric (best and last epoch, and the recipe's report epochs), the other
    metrics at the best epoch, parameters and compression versus the teacher."""
    monitor = results.monitor
    teacher = results.stage("teacher")
    report_epochs = sorted({e for s in results.stages for e in s.at_epochs})
    others = [k for s in results.stages for k in s.best if k != monitor]
    others = list(dict.fromkeys(others))
    header = ["stage", "model", f"{monitor} best", "best epoch", f"{monitor} last"]
    header += [f"{monitor} @{e}" for e in report_epochs] + [f"{k} (best)" for k in others]
    header += ["params", "compression"]
    rows = []
    for s in results.stages:
        compression = f"{teacher.params / s.params:.1f}x" if teacher and s.params else "-"
        row = [STAGE_LABELS.get(s.stage, s.stage), s.model, format_value(s.best.get(monitor)),
               str(s.best_epoch) if s.best_epoch else ("loaded" if not s.trained else "-"),
               format_value(s.last.get(monitor))]
        row += [format_value(s.at_epochs.get(e, {}).get(monitor)) for e in report_epochs]
        row += [format_value(s.best.get(k)) for k in others]
        row += [format_params(s.params), compression]
        rows.append(row)
    text = _markdown(header, rows)
    gain = distillation_gain(results)
    if gain:
        text += "\n\n" + gain
    return text


def distillation_gain(results: Results) -> str:
    """One sentence: how much distillation moved the student, and how much of the gap it closed."""
    monitor = results.monitor
    stages = {s.stage: s.best.get(monitor) for s in results.stages}
    scratch, distilled, teacher = stages.get("scratch"), stages.get("distilled"), stages.get("teacher")
    if scratch is None or distilled is None:
        return ""
    delta = distilled - scratch
    text = f"Distillation changes {monitor} by {delta:+.4f} over the scratch student"
    if teacher is not None and abs(teacher - scratch) > 1e-12:
        text += f", closing {100 * delta / (teacher - scratch):.1f}% of the teacher-scratch gap"
    return text + " (best epochs)."


def plot_curves(results: Results, path: Path) -> Path | None:
    """Training loss and the monitored metric per epoch, one line per stage."""
    trained = [s for s in results.stages if s.history]
    if not trained:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    for s in trained:
        epochs = [r.epoch for r in s.history]
        ax_loss.plot(epochs, [r.losses.get("total", float("nan")) for r in s.history], label=STAGE_LABELS.get(s.stage, s.stage))
        ax_metric.plot(epochs, [r.metrics.get(results.monitor, float("nan")) for r in s.history], label=STAGE_LABELS.get(s.stage, s.stage))
    ax_loss.set(xlabel="epoch", ylabel="training loss (weighted total)", title="Training loss")
    ax_metric.set(xlabel="epoch", ylabel=results.monitor, title=f"Evaluation {results.monitor}")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: Results, run_dir: Path, sample_figure: Path | None = None) -> Path:
    curves = plot_curves(results, run_dir / "curves.png")
    lines = [f"# {results.name} (seed {results.seed})", "", results_table(results), ""]
    lines.append(f"Run time: {results.seconds / 60:.1f} min. Best epoch chosen by {results.monitor}.")
    if curves:
        lines += ["", f"![training curves]({curves.name})"]
    if sample_figure:
        lines += ["", f"![samples]({Path(sample_figure).name})"]
    path = run_dir / "results.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
