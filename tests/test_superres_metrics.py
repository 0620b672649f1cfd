"""PSNR/SSIM on Y with border shave, and RGB PSNR, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdengine import DataInfo
from kdengine_superres.metrics import PSNRRGB, PSNRY, SSIMY, rgb_to_y

INFO = DataInfo(task="superres", scale=4)


def test_rgb_to_y_matches_bt601():
    white, black = torch.ones(3, 1, 1), torch.zeros(3, 1, 1)
    assert rgb_to_y(white).item() == pytest.approx(235.0, abs=1e-3)
    assert rgb_to_y(black).item() == pytest.approx(16.0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert rgb_to_y(red).item() == pytest.approx(16 + 65.481)


def test_psnr_y_of_a_constant_offset_by_hand():
    target = torch.zeros(1, 3, 16, 16)
    output = torch.full((1, 3, 16, 16), 26 / 255)  # on the 8-bit grid: quantisation changes nothing
    metric = PSNRY({"scale": 4}).build(INFO)
    metric.update(output, target)
    diff = (26 / 255) * (65.481 + 128.553 + 24.966)
    assert metric.compute().item() == pytest.approx(10 * math.log10(255**2 / diff**2), abs=1e-4)


def test_psnr_y_shaves_the_border_and_averages_per_image():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 20, 24)
    output = target.clone()
    output[:, :, :4, :] = 1 - output[:, :, :4, :]  # damage only the shaved border rows
    output[1, :, 10, 10] += 0.2  # one interior pixel of the second image
    output = output.clamp(0, 1)

    def by_hand(o, t):
        q = lambda a: np.round(np.clip(a.numpy().astype(np.float64), 0, 1) * 255) / 255  # noqa: E731
        y = lambda a: 16 + 65.481 * a[0] + 128.553 * a[1] + 24.966 * a[2]  # noqa: E731
        err = (y(q(o)) - y(q(t)))[4:-4, 4:-4]
        mse = np.mean(err**2)
        return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)

    second = by_hand(output[1], target[1])
    assert math.isfinite(second)
    # the first image is perfect inside the shave: torchmetrics gives inf for it, so check the second alone
    single = PSNRY({"scale": 4}).build(INFO)
    single.update(output[1:], target[1:])
    assert single.compute().item() == pytest.approx(second, abs=1e-3)


def test_psnr_y_mean_over_a_list_of_different_sizes():
    torch.manual_seed(1)
    metric = PSNRY({"scale": 2}).build(INFO)
    values = []
    outputs, targets = [], []
    for size in ((12, 16), (20, 10)):
        t = torch.rand(3, *size)
        o = (t + 0.05 * torch.randn_like(t)).clamp(0, 1)
        single = PSNRY({"scale": 2}).build(INFO)
        single.update(o[None], t[None])
        values.append(single.compute().item())
        outputs.append(o)
        targets.append(t)
    metric.update(outputs, targets)
    assert metric.compute().item() == pytest.approx(sum(values) / 2, abs=1e-4)


def test_rgb_psnr_by_hand():
    target = torch.zeros(1, 3, 8, 8)
    output = target.clone()
    output[:, 0] = 51 / 255  # red channel off by 51 levels, the others exact
    metric = PSNRRGB({}).build(INFO)
    metric.update(output, target)
    mse = 51**2 / 3
    assert metric.compute().item() == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-4)


def test_ssim_y_is_one_for_identical_and_lower_for_noisy():
    torch.manual_seed(0)
    target = torch.rand(1, 3, 40, 40)
    same = SSIMY({"scale": 4}).build(INFO)
    same.update(target.clone(), target)
    assert same.compute().item() == pytest.approx(1.0, abs=1e-6)
    noisy = SSIMY({"scale": 4}).build(INFO)
    noisy.update((target + 0.2 * torch.randn_like(target)).clamp(0, 1), target)
    assert noisy.compute().item() < 0.9


def test_ssim_y_matches_a_hand_computed_gaussian_ssim():
    from scipy.ndimage import gaussian_filter

    torch.manual_seed(2)
    target = torch.rand(1, 3, 48, 48)
    output = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    metric = SSIMY({"scale": 4}).build(INFO)
    metric.update(output, target)

    def y(a):
        a = np.round(np.clip(a[0].numpy().astype(np.float64), 0, 1) * 255) / 255
        return (16 + 65.481 * a[0] + 128.553 * a[1] + 24.966 * a[2])[4:-4, 4:-4]

    x1, x2 = y(output), y(target)
    blur = lambda a: gaussian_filter(a, 1.5, truncate=5 / 1.5, mode="constant")  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = blur(x1), blur(x2)
    s11, s22, s12 = blur(x1 * x1) - mu1**2, blur(x2 * x2) - mu2**2, blur(x1 * x2) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    expected = ssim_map[5:-5, 5:-5].mean()  # 'valid' region of the 11x11 window
    assert metric.compute().item() == pytest.approx(expected, abs=2e-3)


def test_border_defaults_to_the_dataset_scale():
    target = torch.zeros(1, 3, 12, 12)
    output = target.clone()
    output[..., :3, :] = 1.0  # inside a 3 px border only
    metric = PSNRY({}).build(DataInfo(task="superres", scale=3))
    metric.update(output, target)
    assert math.isinf(metric.compute().item()) or metric.compute().item() > 90
