"""PSNR and SSIM the way super-resolution papers report them.

Outputs are clamped to [0, 1] and rounded to 8-bit levels (as a saved PNG would be). For the Y
variants, both images go to the ITU-R BT.601 luma of MATLAB's ``rgb2ycbcr``:
Y = 16 + 65.481 R + 128.553 G + 24.966 B (R, G, B in [0, 1]; Y in [16, 235]), and ``scale`` pixels
are shaved from every border before comparing, with a peak of 255. Each image gets its own PSNR and
SSIM; the metric is their mean over images (not the PSNR of the pooled error).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torchmetrics import Metric as TMMetric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from kdengine import DataInfo, Metric, Params

BT601 = (65.481, 128.553, 24.966)


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 1, H, W) BT.601 luma in [16, 235] (0-255 scale)."""
    weights = torch.tensor(BT601, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return 16.0 + (image * weights).sum(dim=-3, keepdim=True)


def quantize(image: torch.Tensor) -> torch.Tensor:
    return torch.round(image.clamp(0, 1) * 255) / 255


def shave(image: torch.Tensor, border: int) -> torch.Tensor:
    return image[..., border: image.shape[-2] - border, border: image.shape[-1] - border] if border else image


def prepare(output: torch.Tensor, target: torch.Tensor, y_channel: bool, border: int):
    """Quantized, (optionally) luma, shaved copies in the 0-255 range, float64."""
    output = quantize(output.detach().double())
    target = quantize(target.detach().double())
    if output.shape != target.shape:
        raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} differ in shape")
    if y_channel:
        output, target = rgb_to_y(output), rgb_to_y(target)
    else:
        output, target = output * 255, target * 255
    return shave(output, border), shave(target, border)


def psnr_image(output: torch.Tensor, target: torch.Tensor, y_channel: bool = True, border: int = 0) -> torch.Tensor:
    """PSNR in dB of one (3, H, W) image pair in [0, 1]."""
    out, ref = prepare(output, target, y_channel, border)
    return peak_signal_noise_ratio(out, ref, data_range=255.0)


def ssim_image(output: torch.Tensor, target: torch.Tensor, y_channel: bool = True, border: int = 0) -> torch.Tensor:
    """SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) of one image pair."""
    out, ref = prepare(output, target, y_channel, border)
    return structural_similarity_index_measure(out[None], ref[None], data_range=255.0, gaussian_kernel=True,
                                               sigma=1.5, kernel_size=11)


def _images(batch):
    """A (B, 3, H, W) tensor or a list of (3, H, W) tensors -> an iterable of (3, H, W) tensors."""
    if isinstance(batch, torch.Tensor) and batch.dim() == 3:
        return [batch]
    return list(batch)


class PerImageMean(TMMetric):
    """Mean over images of a per-image score."""

    full_state_update = False

    def __init__(self, score, y_channel: bool, border: int):
        super().__init__()
        self.score = score
        self.y_channel = y_channel
        self.border = border
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, outputs, targets) -> None:
        for output, target in zip(_images(outputs), _images(targets)):
            self.total += self.score(output, target, self.y_channel, self.border).to(self.total.device)
            self.count += 1

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class ScaledParams(Params):
    #: Pixels shaved from each border: the SR factor, as papers do.
    scale: int | None = Field(default=None, ge=0, le=16)


def _border(params: ScaledParams, info: DataInfo) -> int:
    if params.scale is not None:
        return params.scale
    return int(info.scale or 0)


class PSNRY(Metric):
    """PSNR on the Y channel (BT.601), ``scale`` border pixels shaved, mean over images (dB)."""

    Params = ScaledParams

    def build(self, info: DataInfo):
        return PerImageMean(psnr_image, y_channel=True, border=_border(self.params, info))


class SSIMY(Metric):
    """SSIM on the Y channel (BT.601), ``scale`` border pixels shaved, mean over images."""

    Params = ScaledParams

    def build(self, info: DataInfo):
        return PerImageMean(ssim_image, y_channel=True, border=_border(self.params, info))


class PSNRRGB(Metric):
    """PSNR over the three RGB channels (0-255 peak), mean over images; no shave unless ``scale``."""

    class Params(Params):
        scale: int = Field(default=0, ge=0, le=16)

    def build(self, info: DataInfo):
        return PerImageMean(psnr_image, y_channel=False, border=self.params.scale)
