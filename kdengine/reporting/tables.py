"""The results tables (Markdown): one run's stages, a chain's generations, several runs side by
side, and the mean ± std over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kdengine.io.results import Results, StageResult

if TYPE_CHECKING:
    from kdengine.reporting.summary import SeedSummary, StageSummary


STAGE_LABELS = {"teacher": "teacher", "scratch": "student (scratch)", "distilled": "student (distilled)",
                "scratch-transfer": "student (scratch + transfer, teacher's hard labels)"}


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


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def stage_label(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage)


def stage_title(stage: "StageResult | StageSummary") -> str:
    """The stage's label, saying when a teacher was fine-tuned from its factory's pretrained weights."""
    label = stage_label(stage.stage)
    return f"{label} (fine-tuned from pretrained)" if stage.origin == "fine-tuned" else label


def best_epoch_cell(s: StageResult) -> str:
    """The best epoch, or why there is none (a teacher that this run did not train)."""
    if s.origin == "pretrained":
        cell = "pretrained, not trained"
    elif s.best_epoch:
        cell = str(s.best_epoch)
    else:
        cell = "-" if s.trained else "loaded"
    return cell if s.shared_from_seed is None else f"{cell}, shared from seed {s.shared_from_seed}"


def chain(results: Results) -> list[StageResult]:
    return sorted((s for s in results.stages if s.generation is not None), key=lambda s: s.generation)


def split_names(results: "Results | SeedSummary") -> tuple[str, str]:
    """How the tables name the weights and the split that chose them: ("val-best", "val"), or
    ("test-best", "test") under ``train.monitor_split = "test"``."""
    split = getattr(results, "monitor_split", "val")
    return f"{split}-best", split


def results_table(results: Results) -> str:
    """Model; the monitored metric on test with the best weights (chosen on val) and with the
    last; on val at the best epoch and at the recipe's report epochs; the other metrics on test
    with the best weights; parameters and compression versus the teacher."""
    monitor = results.monitor
    best_name, split = split_names(results)
    teacher = results.stage("teacher")
    report_epochs = sorted({e for s in results.stages for e in s.at_epochs})
    others = list(dict.fromkeys(k for s in results.stages for k in s.test_best if k != monitor))
    header = ["stage", "model", f"{monitor} test ({best_name})", f"{monitor} test (last)",
              f"{monitor} {split} (best)", "best epoch"]
    header += [f"{monitor} {split} @{e}" for e in report_epochs] + [f"{k} test ({best_name})" for k in others]
    header += ["params", "compression"]
    rows = []
    for s in results.stages:
        compression = f"{teacher.params / s.params:.1f}x" if teacher and s.params else "-"
        row = [stage_title(s), s.model, format_value(s.test_best.get(monitor)),
               format_value(s.test_last.get(monitor)), format_value(s.best.get(monitor)), best_epoch_cell(s)]
        row += [format_value(s.at_epochs.get(e, {}).get(monitor)) for e in report_epochs]
        row += [format_value(s.test_best.get(k)) for k in others]
        row += [format_params(s.params), compression]
        rows.append(row)
    text = markdown_table(header, rows)
    gain = distillation_gain(results)
    if gain:
        text += "\n\n" + gain
    return text


def loss_weights_note(results: Results) -> str:
    """The loss weights of the stages whose ``weight = "auto"`` terms were measured ("" if none)."""
    lines = [f"- {stage_label(s.stage)}: " + ", ".join(f"{key} {weight:.4g}" for key, weight in s.loss_weights.items())
             for s in results.stages if s.loss_weights]
    if not lines:
        return ""
    return "\n".join(['Loss weights (terms with `weight = "auto"` measured on the first `train.balance_steps` '
                      "train batches of their stage, then fixed):", ""] + lines)


def distillation_gain(results: Results) -> str:
    """One sentence: how much distillation moved the student on test (best weights), and how much
    of the teacher-scratch gap it closed."""
    monitor = results.monitor
    stages = {s.stage: s.test_best.get(monitor) for s in results.stages}
    scratch, distilled, teacher = stages.get("scratch"), stages.get("distilled"), stages.get("teacher")
    if scratch is None or distilled is None:
        return ""
    delta = distilled - scratch
    text = f"Distillation changes test {monitor} by {delta:+.4f} over the scratch student"
    sign = 1 if results.higher_is_better else -1
    if teacher is not None and sign * (teacher - scratch) > 1e-12:
        text += f", closing {100 * delta / (teacher - scratch):.1f}% of the teacher-scratch gap"
    elif teacher is not None:
        text += " (the teacher is no better than the scratch student, so there is no gap to close)"
    return text + f" ({split_names(results)[0]} weights)."


def generation_table(results: Results) -> str:
    """Generation, model, test metric (best weights), parameters, compression vs generation 1,
    drop from the previous generation."""
    gens = chain(results)
    if len(gens) < 2:
        return ""
    monitor = results.monitor
    best_name = split_names(results)[0]
    first = gens[0]
    rows = []
    previous = None
    for s in gens:
        value = s.test_best.get(monitor)
        drop = "-" if previous is None or value is None else f"{previous - value:+.4f}"
        rows.append([str(s.generation), s.stage, s.model, f"taught by {s.teacher}" if s.teacher else "labels",
                     format_value(value), format_params(s.params), f"{first.params / s.params:.1f}x", drop])
        previous = value
    for s in results.stages:
        if s.generation is None:
            rows.append(["-", s.stage, s.model, f"taught by {s.teacher}" if s.teacher else "labels",
                         format_value(s.test_best.get(monitor)), format_params(s.params),
                         f"{first.params / s.params:.1f}x", "-"])
    header = ["generation", "stage", "model", "trained on", f"{monitor} test ({best_name})", "params",
              "compression vs gen 1", "drop from previous"]
    return markdown_table(header, rows)


def comparison_table(runs: list[Results]) -> str:
    """Several runs side by side: one row per run and stage, test with the best and last weights."""
    header = ["run", "seed", "stage", "model", "metric", "test (best weights)", "test (last)", "chosen on",
              "params"]
    rows = []
    for r in runs:
        for s in r.stages:
            rows.append([Path(r.run_dir).name, str(r.seed), stage_title(s), s.model, r.monitor,
                         format_value(s.test_best.get(r.monitor)), format_value(s.test_last.get(r.monitor)),
                         r.monitor_split, format_params(s.params)])
    return markdown_table(header, rows)


def seed_table(summary: "SeedSummary") -> str:
    """mean ± std over seeds of the monitored metric on test (best and last weights) and on val
    (best epoch), and of the other metrics on test with the best weights."""
    monitor = summary.monitor
    best_name, split = split_names(summary)
    teacher = summary.stage("teacher")
    others = list(dict.fromkeys(k for s in summary.stages for k in s.test_best if k != monitor))
    header = ["stage", "model", f"{monitor} test ({best_name})", f"{monitor} test (last)",
              f"{monitor} {split} (best)"]
    header += [f"{k} test ({best_name})" for k in others] + ["params", "compression"]
    rows = []
    for s in summary.stages:
        compression = f"{teacher.params / s.params:.1f}x" if teacher and s.params else "-"
        rows.append([stage_title(s), s.model, str(s.test_best.get(monitor, "-")),
                     str(s.test_last.get(monitor, "-")), str(s.best.get(monitor, "-"))]
                    + [str(s.test_best.get(k, "-")) for k in others] + [format_params(s.params), compression])
    text = markdown_table(header, rows)
    teachers = f" {summary.teacher_note}" if summary.teacher_note else ""
    return text + (f"\n\nMean ± std over seeds {', '.join(map(str, summary.seeds))}. '{best_name}' is each "
                   f"run's best epoch, chosen by {monitor} on the {split} split; 'last' is the final epoch; "
                   f"test is scored once per stage.{teachers}")


def table(results: "Results | SeedSummary") -> str:
    """The table of a run, or of a multi-seed run's summary."""
    return results_table(results) if isinstance(results, Results) else seed_table(results)
