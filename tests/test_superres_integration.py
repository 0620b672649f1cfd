"""Opt-in: the real Set5 benchmark (``KDENGINE_DATA_ROOT`` or ``../shared/data``); skips without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdengine_superres.data import SRPaired
from kdengine_superres.metrics import PSNRY, SSIMY

pytestmark = pytest.mark.integration


def _set5() -> Path:
    root = Path(os.environ.get("KDENGINE_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
    folder = root / "Set5"
    if not (folder / "HR").is_dir() or not (folder / "LR_bicubic" / "X4").is_dir():
        pytest.skip(f"Set5 not found under {root} (set KDENGINE_DATA_ROOT)")
    return folder


def test_set5_x4_bicubic_psnr_y_matches_the_published_baseline():
    provider = SRPaired({"root": str(_set5()), "scale": 4})
    provider.check()
    eval_set = provider.eval_set()
    assert len(eval_set) == 5
    info = provider.info()
    psnr, ssim = PSNRY({"scale": 4}).build(info), SSIMY({"scale": 4}).build(info)
    bicubic = torch.nn.Upsample(scale_factor=4, mode="bicubic", align_corners=False)
    for lr, hr in eval_set:
        assert hr.shape[-2:] == (lr.shape[-2] * 4, lr.shape[-1] * 4)
        out = provider.predict(bicubic, lr[None])
        psnr.update(out, hr[None])
        ssim.update(out, hr[None])
    # Published: 28.42 dB / 0.810 with MATLAB's bicubic; torch's bicubic kernel differs slightly.
    assert 28.0 < psnr.compute().item() < 28.9
    assert 0.79 < ssim.compute().item() < 0.83


def test_set5_tiled_prediction_equals_whole_image_for_bicubic():
    provider = SRPaired({"root": str(_set5()), "scale": 4, "tile": 32, "tile_overlap": 8})
    lr, _ = provider.eval_set()[0]
    model = lambda x: F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)  # noqa: E731
    torch.testing.assert_close(provider.predict(model, lr[None]), model(lr[None]), atol=1e-5, rtol=0)
