"""The edge task's sample figure: input | ground truth | one column per model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _as_image(t: torch.Tensor):
    t = t.detach().float().cpu()
    if t.shape[0] == 1:
        return t[0].clamp(0, 1).numpy(), "gray"
    return t.permute(1, 2, 0).clamp(0, 1).numpy(), None


@torch.no_grad()
def draw_sample_figure(
    samples: list[tuple[torch.Tensor, torch.Tensor]],
    models: dict[str, nn.Module],
    predict,
    path: Path,
) -> Path:
    """One row per ``(image, truth)`` sample; the model columns show sigmoid edge probabilities."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    columns = ["input", "ground truth", *models]
    fig, axes = plt.subplots(
        len(samples), len(columns), figsize=(2.2 * len(columns), 2.2 * len(samples)), squeeze=False
    )
    for row, (image, truth) in enumerate(samples):
        panels = [image, truth.clamp(min=0)]
        for model in models.values():
            device = next(model.parameters()).device
            logits = predict(model, image[None].to(device))
            panels.append(torch.sigmoid(logits[0].float()))
        for col, panel in enumerate(panels):
            pixels, cmap = _as_image(panel)
            ax = axes[row][col]
            ax.imshow(pixels, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
