"""The classification sample figure: test images with each model's top-3 probabilities."""

from __future__ import annotations

from pathlib import Path

import torch


def top3_grid(dataset, models: dict, path: Path, mean, std, class_names=None, count: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(dataset))
    images, labels = zip(*(dataset[i] for i in range(count)))
    batch = torch.stack(images)
    names = class_names or [str(i) for i in range(10_000)]
    probs = {}
    for label, model in models.items():
        device = next(model.parameters()).device
        with torch.inference_mode():
            probs[label] = torch.softmax(model(batch.to(device)).float(), dim=1).cpu()
    shown = (batch * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)).clamp(0, 1)
    fig, axes = plt.subplots(count, 1 + len(models), figsize=(2.2 * (1 + len(models)), 1.9 * count), squeeze=False)
    for row in range(count):
        ax = axes[row][0]
        image = shown[row].permute(1, 2, 0).numpy()
        ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray" if image.shape[2] == 1 else None)
        ax.set_title(f"label: {names[int(labels[row])]}", fontsize=9)
        ax.axis("off")
        for col, (label, p) in enumerate(probs.items(), start=1):
            ax = axes[row][col]
            values, indices = p[row].topk(min(3, p.shape[1]))
            text = "\n".join(f"{names[int(i)]}: {float(v):.2f}" for v, i in zip(values, indices))
            right = int(indices[0]) == int(labels[row])
            ax.text(0.05, 0.5, text, fontsize=10, va="center", color="darkgreen" if right else "darkred")
            if row == 0:
                ax.set_title(label, fontsize=10)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
