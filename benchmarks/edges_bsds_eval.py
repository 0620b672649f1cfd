"""Evaluate the stages of a finished edge run on the BSDS500 test split (ODS, OIS, Dice).

Train with ``recipes/edge-bsds500.toml`` while monitoring on a few *val* images (so that nothing
is chosen on test), then score each stage's weights once on test::

    kdengine run recipes/edge-bsds500.toml --output-dir /tmp/edge_bsds \\
        --set data.params.root=../shared/data/BSDS500 \\
        --set 'data.params.eval_splits=["val"]' --set data.params.eval_limit=16 ...
    python benchmarks/edges_bsds_eval.py /tmp/edge_bsds/edge-bsds500-<stamp> \\
        --root ../shared/data/BSDS500 --eval-scale 0.4 --thresholds 25

``--which last`` (default) scores the final epoch's weights: the best epoch was chosen on the
monitoring split, and the last one involves no choice at all. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kdengine.catalog import get_catalog
from kdengine.checkpoint import load_weights
from kdengine.recipe import load_recipe
from kdengine_edges.bsds import BSDS500
from kdengine_edges.metrics import BoundaryF, DiceScore
from kdengine_edges.transforms import collate_edges

#: published BSDS500 test ODS (from ../shared/data/README.md), for orientation
PUBLISHED = {"Canny": 0.611, "HED": 0.788, "RCF": 0.806, "PiDiNet": 0.807, "human": 0.803}


def stage_models(run_dir: Path):
    """(stage, role, spec) of every trained stage in the run folder."""
    recipe = load_recipe(run_dir / "recipe.json")
    yield "teacher", "teacher", recipe.teacher
    for stage in ("scratch", "distilled"):
        if (run_dir / "checkpoints" / stage).is_dir():
            yield stage, "student", recipe.student


@torch.inference_mode()
def evaluate(model, loader, thresholds: int) -> dict[str, float]:
    dice, boundary = DiceScore(), BoundaryF(thresholds)
    for inputs, targets in loader:
        logits = model(inputs).float()
        dice.update(logits, targets)
        boundary.update(logits, targets)
    out = {k: float(v) for k, v in boundary.compute().items()}
    out["dice"] = float(dice.compute())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/BSDS500"))
    parser.add_argument("--eval-scale", type=float, default=1.0)
    parser.add_argument("--thresholds", type=int, default=99)
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--which", choices=("last", "best"), default="last")
    parser.add_argument("--target", choices=("mean", "consensus"), default="mean")
    parser.add_argument("--stages", default="teacher,scratch,distilled",
                        help="comma-separated stages to score (e.g. the teacher while students train)")
    args = parser.parse_args()

    data = BSDS500({"root": args.root, "train_splits": ["train"], "eval_splits": ["test"],
                    "eval_scale": args.eval_scale, "eval_limit": args.limit, "target": args.target})
    loader = DataLoader(data.eval_set(), batch_size=4, collate_fn=collate_edges)
    catalog = get_catalog()
    rows = {}
    wanted = set(args.stages.split(","))
    for stage, role, spec in stage_models(args.run_dir):
        if stage not in wanted:
            continue
        model = catalog.get(role, spec.name)(spec.params).build(data.info())
        load_weights(model, args.run_dir / "checkpoints" / stage / f"{args.which}.safetensors")
        model.eval()
        started = time.perf_counter()
        rows[stage] = evaluate(model, loader, args.thresholds)
        rows[stage]["eval_seconds"] = time.perf_counter() - started
        print(stage, json.dumps({k: round(v, 4) for k, v in rows[stage].items()}), flush=True)
    print(f"\nBSDS500 test ({len(data.eval_set())} images, scale {args.eval_scale}, "
          f"{args.thresholds} thresholds, {args.which} weights)")
    print("| stage | ODS | OIS | Dice |\n|---|---|---|---|")
    for stage, r in rows.items():
        print(f"| {stage} | {r['ods']:.3f} | {r['ois']:.3f} | {r['dice']:.3f} |")
    for name, ods in PUBLISHED.items():
        print(f"| {name} (published) | {ods:.3f} | | |")
    out = args.run_dir / f"bsds_test_{args.which}_{'-'.join(rows)}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
