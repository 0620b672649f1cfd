"""Figures of a run: ``curves.png`` (metric and loss terms per epoch) and ``generations.png``."""

from __future__ import annotations

from pathlib import Path

from kdengine.io.results import Results
from kdengine.reporting.tables import chain, format_value, stage_label


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures are files, no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: Results, path: Path) -> Path | None:
    """The monitored metric per epoch for every stage, and each stage's loss terms per epoch."""
    trained = [s for s in results.stages if s.history]
    if not trained:
        return None
    plt = pyplot()
    cols = len(trained) + 1
    fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.3), squeeze=False)
    ax_metric = axes[0][0]
    for s in trained:
        evaluated = [r for r in s.history if r.metrics]  # train.eval_every skips some epochs
        ax_metric.plot([r.epoch for r in evaluated], [r.metrics.get(results.monitor, float("nan")) for r in evaluated],
                       marker="o", markersize=3, label=stage_label(s.stage))
    ax_metric.set(xlabel="epoch", ylabel=results.monitor, title=f"{results.monitor_split} {results.monitor}")
    ax_metric.legend(fontsize=8)
    for ax, s in zip(axes[0][1:], trained):
        epochs = [r.epoch for r in s.history]
        for term in s.history[0].losses:
            ax.plot(epochs, [r.losses.get(term, float("nan")) for r in s.history], label=term,
                    linewidth=2 if term == "total" else 1)
        ax.set(xlabel="epoch", title=f"{stage_label(s.stage)}: loss terms")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_generations(results: Results, path: Path) -> Path | None:
    """Metric and parameter count per generation (the progressive-distillation figure)."""
    gens = chain(results)
    if len(gens) < 2:
        return None
    plt = pyplot()
    fig, ax_params = plt.subplots(figsize=(5.5, 3.6))
    x = list(range(len(gens)))
    labels = [f"gen {s.generation}\n{s.stage}" for s in gens]
    ax_params.bar(x, [s.params / 1e6 for s in gens], color="#9ecae1", label="parameters (M)")
    ax_params.set_ylabel("parameters (M)")
    ax_params.set_xticks(x, labels)
    ax_metric = ax_params.twinx()
    ax_metric.plot(x, [s.test_best.get(results.monitor, float("nan")) for s in gens], color="#d62728",
                   marker="o", label=results.monitor)
    ax_metric.set_ylabel(f"{results.monitor} (test, {results.monitor_split}-best weights)")
    for xi, s in zip(x, gens):
        ax_metric.annotate(format_value(s.test_best.get(results.monitor)), (xi, s.test_best.get(results.monitor, 0)),
                           textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax_params.set_title("Progressive distillation: size and accuracy per generation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
