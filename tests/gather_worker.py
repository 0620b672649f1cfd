"""Scores a tiny super-resolution evaluation set of whole images of different sizes with the
engine's Scorer. ``tests/test_gather.py`` runs it in its own process for the reference and under
``torch.distributed.run`` in two gloo processes: ``python gather_worker.py OUT.json``."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric as TMMetric

from kdengine.plugins.catalog import get_catalog
from kdengine.recipe import ComponentSpec
from kdengine.train.accelerator import close_process_group, make_accelerator
from kdengine.train.evaluate import Scorer
from kdengine_superres.data import FullImageDataset, SRParams, SRProvider

#: HR sizes (height, width) in order: 5 images, so two processes get 3 and 2 of them; with 2 per
#: process and step, the first step is stacked on one process and a list on the other.
SIZES = [(16, 16), (16, 16), (16, 24), (24, 16), (20, 20)]
#: Global evaluation batches to try: 2 (one image per process, stacked to different shapes) and 4.
BATCH_SIZES = (2, 4)


class ImageTally(TMMetric):
    """How many target images were seen, and the sum of a number unique to each of them."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("images", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("signature", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, outputs, targets) -> None:
        for target in targets:  # a (B, 3, H, W) tensor or a list of (3, H, W) tensors
            self.images += 1
            self.signature += float(target[0, 0, 0]) * 1000 + target.shape[-2] * 10 + target.shape[-1]

    def compute(self):
        return {"images": self.images, "signature": self.signature}


def scores() -> dict[int, dict[str, float]]:
    accelerator = make_accelerator("no")
    params = SRParams(scale=2, patch=16, tile=0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    dataset = FullImageDataset(images, [f"image{i}" for i in range(len(images))], params)
    provider = SRProvider(params)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(3, 3, 3, padding=1))
    psnr = get_catalog().get("metric", "psnr")({}).build(provider.info())
    scorer = Scorer(accelerator, provider,
                    [(ComponentSpec(name="psnr"), psnr), (ComponentSpec(name="tally"), ImageTally())])
    out = {}
    for batch_size in BATCH_SIZES:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=provider.collate_fn())
        out[batch_size] = scorer(model.to(accelerator.device), accelerator.prepare_data_loader(loader), False)
    return out


if __name__ == "__main__":
    from accelerate.state import PartialState

    result = scores()
    if PartialState().is_main_process:
        with open(sys.argv[1], "w") as handle:
            json.dump({str(k): v for k, v in result.items()}, handle)
    close_process_group()
