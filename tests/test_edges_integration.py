"""Opt-in: the BSDS500 reader and metrics on a few real images.

Reads ``$KDENGINE_DATA_ROOT/BSDS500`` or ``../shared/data/BSDS500`` beside the repository;
skips cleanly when neither exists.
"""

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def bsds_root() -> Path:
    candidates = []
    if os.environ.get("KDENGINE_DATA_ROOT"):
        candidates.append(Path(os.environ["KDENGINE_DATA_ROOT"]) / "BSDS500")
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "BSDS500")
    for root in candidates:
        if (root / "images" / "test").is_dir() and (root / "groundTruth" / "test").is_dir():
            return root
    pytest.skip("BSDS500 not found (set KDENGINE_DATA_ROOT or provide ../shared/data)")


def few_real_files(source: Path, target: Path, count: int = 2) -> Path:
    """The first ``count`` images of each split, in the official layout (a temporary copy)."""
    for split in ("train", "val", "test"):
        for image in sorted((source / "images" / split).glob("*.jpg"))[:count]:
            for kind, name in (("images", image.name), ("groundTruth", f"{image.stem}.mat")):
                (target / kind / split).mkdir(parents=True, exist_ok=True)
                shutil.copy(source / kind / split / name, target / kind / split / name)
    return target


def test_real_bsds500_items_and_metrics(tmp_path):
    from kdengine_edges.bsds import BSDS500
    from kdengine_edges.metrics import Dice, OdsOis
    from kdengine_edges.transforms import collate_edges

    root = few_real_files(bsds_root(), tmp_path / "BSDS500")
    data = BSDS500({"root": root, "size": 64})
    data.check()
    image, target = data.train_set()[0]
    assert image.shape == (3, 64, 64) and target.shape == (1, 64, 64)
    inputs, targets = collate_edges([data.test_set()[i] for i in range(2)])  # two landscape images
    assert inputs.shape == (2, 3, 321, 481)
    assert 4 <= targets["annotators"].shape[1] <= 9
    # one annotator's boundaries as the prediction: precise against all, recall below one
    best = targets["annotators"][:, :1].clamp(min=0)
    logits = (best * 2 - 1) * 6
    ods = OdsOis({"thresholds": 5}).build(data.info())
    ods.update(logits, targets)
    result = ods.compute()
    assert 0.5 < float(result["ods"]) < 1.0
    dice = Dice().build(data.info())
    dice.update(logits, targets)
    assert 0.0 <= float(dice.compute()) <= 1.0
