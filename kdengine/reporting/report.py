"""The run's report: ``results.md`` and a self-contained ``report.html`` (tables and figures), and
the multi-seed ``summary.md`` / ``summary.html``."""

from __future__ import annotations

import warnings
from pathlib import Path

from kdengine.io.atomic import atomic_write_text
from kdengine.reporting.figures import plot_curves, plot_generations
from kdengine.io.results import Results
from kdengine.reporting.tables import (generation_table, loss_weights_note, results_table, seed_table, split_names,
                                       stage_label)
from kdengine.plugins.coupling import coupling_note


def title_note(results) -> str:
    """A title's warning when the test split chose the epochs."""
    return ": epochs chosen on the test split" if split_names(results)[1] == "test" else ""


def step_notes(results: Results) -> list[str]:
    """Lines for the stages whose steps did not all update the model: fp16 steps the gradient
    scaler skipped (overflow) and batches left out under ``train.on_nan = "skip"``."""
    lines = []
    for s in results.stages:
        left_out = sum(r.skipped_batches for r in s.history)
        parts = []
        if s.scaler_skipped:
            parts.append(f"the fp16 gradient scaler skipped {s.scaler_skipped} overflowed step(s) "
                         "(the scale was lowered and training went on)")
        if left_out:
            parts.append(f"{left_out} batch(es) with a non-finite loss or gradients were left out "
                         '(`train.on_nan = "skip"`)')
        if parts:
            lines.append(f"- {s.stage}: " + "; ".join(parts))
    return ["", "Steps without an update:", ""] + lines if lines else []


def transfer_notes(results: Results) -> list[str]:
    """Which stages trained on the transfer set (``[data.transfer]``) and with what targets, and
    which never saw it: a distilled student's gain over scratch may be the extra images'."""
    if not any(s.transfer for s in results.stages):
        return []
    lines = ["", "Transfer set:", ""]
    lines += [f"- {stage_label(s.stage)}: " + (s.transfer or "never sees it") for s in results.stages
              if s.stage != "teacher"]
    return lines


def write_report(results: Results, run_dir: Path, sample_figure: Path | None = None) -> Path:
    """``results.md`` and a self-contained ``report.html`` with every table and figure."""
    run_dir = Path(run_dir)
    curves = plot_curves(results, run_dir / "curves.png")
    generations = plot_generations(results, run_dir / "generations.png")
    lines = [f"# {results.name} (seed {results.seed}){title_note(results)}", "", results_table(results), ""]
    weights_note = loss_weights_note(results)
    if weights_note:
        lines += [weights_note, ""]
    gen_table = generation_table(results)
    if gen_table:
        lines += ["## Generations", "", gen_table, ""]
    best_name, split = split_names(results)
    note = (f"Run time: {results.seconds / 60:.1f} min. Each stage's best epoch is chosen by {results.monitor} "
            f"on the {split} split; the test split is scored once per stage, with the {best_name} weights "
            "and with the last.")
    if split == "test":
        note += (" **The test split chose the epochs (`train.monitor_split = \"test\"`): these test "
                 "numbers are optimistic, for a quick look only.**")
    lines.append(note)
    for stage in results.stages:
        if stage.micro_batch and stage.micro_batch_coupled:
            lines += ["", f"**{stage_label(stage.stage)} trained in micro-batches of {stage.micro_batch} rows "
                      f"(`train.max_memory`): {coupling_note(stage.micro_batch_coupled)}.**"]
    if results.skipped_samples:
        lines += ["", f"**{results.skipped_samples} bad sample(s) were left out** "
                  '(`data.on_bad_sample = "skip"`):', ""]
        lines += [f"- {name}" for name in results.skipped_files]
        if results.skipped_samples > len(results.skipped_files):
            lines.append(f"- ... and {results.skipped_samples - len(results.skipped_files)} more")
    lines += step_notes(results)
    lines += transfer_notes(results)
    for title, figure in (("Training curves", curves), ("Generations", generations), ("Samples", sample_figure)):
        if figure:
            lines += ["", f"## {title}", "", f"![{title.lower()}]({Path(figure).name})"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(run_dir / "results.md", text)
    write_html(text, run_dir / "report.html", run_dir, title=f"{results.name}: kdengine report")
    return run_dir / "results.md"


HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def write_html(markdown_text: str, path: Path, base: Path, title: str) -> Path:
    """Render markdown to one HTML file, with the PNG figures embedded (no side files needed)."""
    import base64
    import html
    import re

    from markdown_it import MarkdownIt

    def embed(match: re.Match) -> str:
        alt, target = match.group(1), match.group(2)
        file = base / target
        if not file.is_file():
            return match.group(0)
        data = base64.b64encode(file.read_bytes()).decode("ascii")
        return f"![{alt}](data:image/png;base64,{data})"

    embedded = re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", embed, markdown_text)
    body = MarkdownIt("commonmark").enable("table").render(embedded)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>{body}</body></html>")
    atomic_write_text(path, page)
    return path


def write_seed_report(summary, root: Path) -> Path:
    lines = [f"# {summary.name}: {len(summary.seeds)} seeds{title_note(summary)}", "", seed_table(summary), "",
             "Runs: " + ", ".join(f"[{Path(r).name}]({Path(r).name}/report.html)" for r in summary.runs)]
    text = "\n".join(lines) + "\n"
    atomic_write_text(root / "summary.md", text)
    write_html(text, root / "summary.html", root, title=f"{summary.name}: {len(summary.seeds)} seeds")
    return root / "summary.md"


def finish_run_report(run_dir: Path, results: Results, provider, models: dict) -> None:
    """At the end of a run: ``results.json``, the task's sample figure (drawn by the dataset
    provider from every stage's model) and the report."""
    run_dir = Path(run_dir)
    results.save(run_dir / "results.json")
    figure = None
    try:
        figure = provider.sample_figure(models, run_dir / "samples.png")
    except Exception as exc:  # a plugin's figure must never cost the run its results
        warnings.warn(f"the dataset's sample figure failed: {type(exc).__name__}: {exc}")
    write_report(results, run_dir, figure)
