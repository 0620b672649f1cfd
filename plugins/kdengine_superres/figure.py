"""The sample figure: LR input | ground truth | teacher | student | student KD, with zoomed crops."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .metrics import psnr_image

LABELS = {"teacher": "Teacher", "scratch": "Student (no KD)", "distilled": "Student (KD)"}
ORDER = ["teacher", "scratch", "distilled"]


def detailed_crop(hr: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` square with the most gradient energy (where SR differs most)."""
    gray = hr.mean(0, keepdim=True)[None]
    energy = (gray[..., 1:, :-1] - gray[..., :-1, :-1]).abs() + (gray[..., :-1, 1:] - gray[..., :-1, :-1]).abs()
    size = min(size, energy.shape[-2], energy.shape[-1])
    pooled = F.avg_pool2d(energy, size, stride=max(1, size // 4))
    index = int(pooled.flatten().argmax())
    rows, cols = pooled.shape[-2:]
    stride = max(1, size // 4)
    return (index // cols) * stride, (index % cols) * stride


def _image(tensor: torch.Tensor):
    return tensor.clamp(0, 1).permute(1, 2, 0).numpy()


def draw_sr_figure(lr: torch.Tensor, hr: torch.Tensor, outputs: dict[str, torch.Tensor], path: Path,
                   scale: int, crop: int = 96) -> Path:
    """Two rows: full images (with the crop outlined), then the zoomed crops; PSNR-Y in the titles."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    upscaled = F.interpolate(lr[None], size=hr.shape[-2:], mode="nearest")[0]
    panels = [("LR input (x%d)" % scale, upscaled), ("Ground truth", hr)]
    labels = [k for k in ORDER if k in outputs] + [k for k in outputs if k not in ORDER]
    for key in labels:
        psnr = float(psnr_image(outputs[key], hr, y_channel=True, border=scale))
        panels.append((f"{LABELS.get(key, key)}\n{psnr:.2f} dB", outputs[key]))
    top, left = detailed_crop(hr, crop)
    size = min(crop, hr.shape[-2], hr.shape[-1])

    fig, axes = plt.subplots(2, len(panels), figsize=(2.6 * len(panels), 5.6), squeeze=False)
    for column, (title, image) in enumerate(panels):
        axes[0, column].imshow(_image(image))
        axes[0, column].add_patch(Rectangle((left, top), size, size, fill=False, edgecolor="red", linewidth=1.2))
        axes[0, column].set_title(title, fontsize=9)
        axes[1, column].imshow(_image(image[:, top: top + size, left: left + size]), interpolation="nearest")
        for row in (0, 1):
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
    fig.suptitle(f"x{scale} super-resolution (PSNR on Y, {scale} px border shaved)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
