"""The results tables (Markdown): one run's stages, a chain's generations, several runs side by
side, and the mean ± std over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kdengine.reporting.results import Results, StageResult

if TYPE_CHECKING:
    from kdengine.reporting.summary import SeedSummary


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


def stage_label(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage)


def chain(results: Results) -> list[StageResult]:
    return sorted((s for s in results.stages if s.generation is not None), key=lambda s: s.generation)


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
    sign = 1 if results.higher_is_better else -1
    if teacher is not None and sign * (teacher - scratch) > 1e-12:
        text += f", closing {100 * delta / (teacher - scratch):.1f}% of the teacher-scratch gap"
    elif teacher is not None:
        text += " (the teacher is no better than the scratch student, so there is no gap to close)"
    return text + " (best epochs)."


def generation_table(results: Results) -> str:
    """Generation, model, metric, parameters, compression vs generation 1, drop from the previous."""
    gens = chain(results)
    if len(gens) < 2:
        return ""
    monitor = results.monitor
    first = gens[0]
    rows = []
    previous = None
    for s in gens:
        value = s.best.get(monitor)
        drop = "-" if previous is None or value is None else f"{previous - value:+.4f}"
        rows.append([str(s.generation), s.stage, s.model, f"taught by {s.teacher}" if s.teacher else "labels",
                     format_value(value), format_params(s.params), f"{first.params / s.params:.1f}x", drop])
        previous = value
    for s in results.stages:
        if s.generation is None:
            rows.append(["-", s.stage, s.model, f"taught by {s.teacher}" if s.teacher else "labels",
                         format_value(s.best.get(monitor)), format_params(s.params),
                         f"{first.params / s.params:.1f}x", "-"])
    header = ["generation", "stage", "model", "trained on", f"{monitor} best", "params",
              "compression vs gen 1", "drop from previous"]
    return _markdown(header, rows)


def comparison_table(runs: list[Results]) -> str:
    """Several runs side by side: one row per run and stage."""
    header = ["run", "seed", "stage", "model", "metric", "best", "last", "params"]
    rows = []
    for r in runs:
        for s in r.stages:
            rows.append([Path(r.run_dir).name, str(r.seed), stage_label(s.stage), s.model, r.monitor,
                         format_value(s.best.get(r.monitor)), format_value(s.last.get(r.monitor)),
                         format_params(s.params)])
    return _markdown(header, rows)


def seed_table(summary) -> str:
    """mean ± std over seeds of the monitored metric (best and last epoch) and of the other metrics."""
    monitor = summary.monitor
    teacher = summary.stage("teacher")
    others = list(dict.fromkeys(k for s in summary.stages for k in s.best if k != monitor))
    header = ["stage", "model", f"{monitor} best (mean ± std)", f"{monitor} last (mean ± std)"]
    header += [f"{k} best" for k in others] + ["params", "compression"]
    rows = []
    for s in summary.stages:
        compression = f"{teacher.params / s.params:.1f}x" if teacher and s.params else "-"
        rows.append([STAGE_LABELS.get(s.stage, s.stage), s.model, str(s.best.get(monitor, "-")),
                     str(s.last.get(monitor, "-"))] + [str(s.best.get(k, "-")) for k in others]
                    + [format_params(s.params), compression])
    text = _markdown(header, rows)
    return text + f"\n\nSeeds: {', '.join(map(str, summary.seeds))}. 'best' is each run's best epoch " \
                  f"(chosen by {monitor} on the evaluation split, as most published KD results); 'last' is the final epoch."


def table(results: "Results | SeedSummary") -> str:
    """The table of a run, or of a multi-seed run's summary."""
    return results_table(results) if isinstance(results, Results) else seed_table(results)
