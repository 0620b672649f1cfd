"""Set5 x4 PSNR-Y of bicubic, a SwinIR teacher, and the attention student without and with KD.

Takes the teacher, student, losses and optimiser of recipes/sr.toml (or --recipe), trains on BSDS500
train images (bicubic x4 degradation, as Set5's LR_bicubic/X4 is made) with a reduced budget,
validates on the McMaster images and tests on Set5 with PSNR/SSIM on Y, 4 px shaved::

    python benchmarks/superres_set5.py --data-root ../shared/data [--set train.epochs=4 ...]

Not part of the test suite; it takes tens of minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib
from pathlib import Path

import torch

import kdengine
from kdengine_superres.data import paired_set
from kdengine_superres.metrics import PSNRY, SSIMY


DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sr.toml"


def recipe(data_root: Path, base: Path = DEFAULT_RECIPE) -> dict:
    """The models, losses and optimiser of ``base`` (recipes/sr.toml), retargeted at BSDS500 -> Set5.

    Only the data (and a shorter default budget, since an epoch here is 200 images) change, so the
    benchmark measures the same distillation setting as the offline recipe.
    """
    with open(base, "rb") as handle:
        spec = tomllib.load(handle)
    spec["run"] = {**spec.get("run", {}), "name": "sr-set5", "seed": 0}
    spec["data"] = {"name": "sr_folder", "params": {
        "root": str(data_root / "BSDS500" / "images" / "train"),
        "val_root": str(data_root / "McMaster"),
        "test_root": str(data_root / "Set5"),
        # Set5's LR_bicubic/X4 is plain bicubic, so train on plain bicubic too
        "scale": 4, "patch": 160, "degradation": "bicubic", "patches_per_image": 2,
    }}
    spec["teacher"].pop("checkpoint", None)
    spec["teacher"]["train"] = {**spec["teacher"].get("train", {}), "epochs": 12}
    spec["train"]["epochs"] = 6
    return spec


def bicubic_scores(data_root: Path) -> tuple[float, float]:
    info = kdengine.DataInfo(task="superres", scale=4)
    psnr, ssim = PSNRY({"scale": 4}).build(info), SSIMY({"scale": 4}).build(info)
    upsample = torch.nn.Upsample(scale_factor=4, mode="bicubic", align_corners=False)
    for lr, hr in paired_set(data_root / "Set5", 4):
        out = upsample(lr[None])
        psnr.update(out, hr[None])
        ssim.update(out, hr[None])
    return psnr.compute().item(), ssim.compute().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("KDENGINE_DATA_ROOT", "../shared/data"))
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                        help="recipe whose teacher, student, losses and optimiser are used")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    root = Path(args.data_root)
    started = time.perf_counter()
    results = kdengine.run(recipe(root, args.recipe), overrides=args.overrides, progress=False, output_dir=args.output_dir)
    psnr, ssim = bicubic_scores(root)
    print(f"bicubic: PSNR-Y {psnr:.2f} dB, SSIM-Y {ssim:.4f}")
    print(kdengine.table(results))
    print(json.dumps({s.stage: {"best": s.best, "last": s.last, "seconds": round(s.seconds, 1), "params": s.params}
                      for s in results.stages}, indent=1))
    print(f"total {time.perf_counter() - started:.0f} s; run folder {results.run_dir}")


if __name__ == "__main__":
    main()
