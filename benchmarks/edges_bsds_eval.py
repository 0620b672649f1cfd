"""Evaluate the stages of a finished edge run on the BSDS500 test split (ODS, OIS, Dice).

Train with ``recipes/edge-bsds500.toml`` while monitoring on a few *val* images (so that nothing
is chosen on test), then score each stage's weights once on test::

    kdengine run recipes/edge-bsds500.toml --output-dir runs/edge_bsds \\
        --set data.params.root=../shared/data/BSDS500 \\
        --set data.params.val_limit=16 --set data.params.val_scale=0.5 ...
    python benchmarks/edges_bsds_eval.py runs/edge_bsds/edge-bsds500-<stamp> \\
        --root ../shared/data/BSDS500 --eval-scale 0.4 --thresholds 25

``--which last`` (default) scores the final epoch's weights: the best epoch was chosen on the
monitoring split, and the last one involves no choice at all. Not part of the test suite.

``--speed`` (no run folder) times the boundary F-measure instead: one dense noisy 256x256
prediction with three annotators, then the first ``--limit`` (default 50) test images of
``--root`` with two kinds of made-up predictions (an untrained network's noise, a weak model's
blurred ground truth), through the metric as an evaluation calls it::

    python benchmarks/edges_bsds_eval.py --speed --root ../shared/data/BSDS500 --thresholds 99
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from kdengine.plugins.catalog import get_catalog
from kdengine.io.weights import load_weights
from kdengine.recipe import load_recipe
from kdengine_edges.boundary import default_max_dist, image_counts, thin_stack, thresholds
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
def evaluate(model, loader, thresholds: int, data: BSDS500) -> dict[str, float]:
    """Each image in its own orientation: batches mixing portrait and landscape come as lists."""
    dice, boundary = DiceScore(), BoundaryF(thresholds)
    for inputs, targets in loader:
        logits = data.predict(model, inputs)
        logits = [x.float() for x in logits] if isinstance(logits, list) else logits.float()
        dice.update(logits, targets)
        boundary.update(logits, targets)
    out = {k: float(v) for k, v in boundary.compute().items()}
    out["dice"] = float(dice.compute())
    return out


def noise_logits(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An untrained network: smooth noise around p = 0.5, dense at every threshold."""
    noise = ndimage.gaussian_filter(rng.standard_normal((height, width)), 1.0)
    return (noise / noise.std()).astype(np.float32)


def weak_logits(rng: np.random.Generator, annotators: np.ndarray) -> np.ndarray:
    """A weak model: the annotators' mean, blurred, with smooth noise on top."""
    mean = ndimage.gaussian_filter(np.clip(annotators, 0, 1).mean(axis=0), 1.5)
    prob = 0.7 * mean / max(float(mean.max()), 1e-6)
    prob += 0.3 * ndimage.gaussian_filter(rng.random(mean.shape), 1.0)
    prob = np.clip(prob, 1e-4, 1 - 1e-4)
    return np.log(prob / (1 - prob)).astype(np.float32)


def synthetic_annotators(rng: np.random.Generator, size: int, count: int) -> list[np.ndarray]:
    """Outlines of one random segmentation, each annotator shifted by up to a pixel."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 16)
    labels = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75]))
    out = []
    for _ in range(count):
        lab = np.roll(labels, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
        edge = np.zeros(lab.shape, dtype=bool)
        edge[:-1] |= lab[:-1] != lab[1:]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        out.append(edge)
    return out


def timed(fn, repeat: int = 1) -> tuple[float, float, object]:
    """(best wall seconds, best CPU seconds, result) over ``repeat`` calls."""
    wall, cpu, result = [], [], None
    for _ in range(repeat):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu), result


def speed(args) -> None:
    """Time the boundary F-measure (see the module docstring)."""
    rng = np.random.default_rng(0)
    size, count = 256, 3
    prob = 1 / (1 + np.exp(-noise_logits(rng, size, size)))
    gts = synthetic_annotators(rng, size, count)
    levels = thresholds(args.thresholds)
    max_dist = default_max_dist(size, size)
    wall, cpu, counts = timed(lambda: image_counts(prob, gts, levels, max_dist), args.repeat)
    binary = prob[None] >= levels[:, None, None]
    thin_wall, thin_cpu, _ = timed(lambda: thin_stack(binary), args.repeat)
    print(f"one dense noisy {size}x{size} image, {count} annotators, {len(levels)} thresholds "
          f"(up to {int(counts[:, 1].max())} thinned pixels): {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"(thinning alone {thin_wall:.2f} s wall, {thin_cpu:.2f} s CPU)", flush=True)

    if not args.root.is_dir():
        print(f"{args.root}: not found, no BSDS500 batch timed")
        return
    data = BSDS500({"root": args.root, "test_scale": args.eval_scale, "test_limit": args.limit or 50})
    # one image per batch: portrait and landscape images keep their own shapes
    loader = DataLoader(data.test_set(), batch_size=1, collate_fn=collate_edges)
    batches = [targets for _, targets in loader]
    images = sum(len(t["annotators"]) for t in batches)
    for kind in ("untrained", "weak"):
        logits = [torch.from_numpy(np.stack([
            noise_logits(rng, *a.shape[1:]) if kind == "untrained" else weak_logits(rng, a)
            for a in targets["annotators"].numpy()]))[:, None] for targets in batches]
        metric = BoundaryF(args.thresholds)

        def run():
            metric.reset()
            for batch_logits, targets in zip(logits, batches):
                metric.update(batch_logits, targets)
            return metric.compute()

        wall, cpu, result = timed(run)
        print(f"BSDS500 test, first {images} images (scale {args.eval_scale}), {kind} "
              f"predictions, {args.thresholds} thresholds: {wall:.1f} s wall, {cpu:.1f} s CPU, "
              f"{wall / images:.2f} s per image; ODS {float(result['ods']):.3f}, "
              f"OIS {float(result['ois']):.3f}", flush=True)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--speed", action="store_true",
                        help="time the boundary F-measure on made-up predictions instead")
    parser.add_argument("--repeat", type=int, default=1,
                        help="--speed: best of N runs of the single image")
    parser.add_argument("--root", type=Path, default=Path("../shared/data/BSDS500"))
    parser.add_argument("--eval-scale", type=float, default=1.0)
    parser.add_argument("--thresholds", type=int, default=99)
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--which", choices=("last", "best"), default="last")
    parser.add_argument("--target", choices=("mean", "consensus"), default="mean")
    parser.add_argument("--stages", default="teacher,scratch,distilled",
                        help="comma-separated stages to score (e.g. the teacher while students train)")
    args = parser.parse_args()
    if args.speed:
        speed(args)
        return
    if args.run_dir is None:
        parser.error("give the run folder (or --speed)")

    data = BSDS500({"root": args.root, "test_scale": args.eval_scale, "test_limit": args.limit,
                    "target": args.target})
    loader = DataLoader(data.test_set(), batch_size=4, collate_fn=collate_edges)
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
        rows[stage] = evaluate(model, loader, args.thresholds, data)
        rows[stage]["eval_seconds"] = time.perf_counter() - started
        print(stage, json.dumps({k: round(v, 4) for k, v in rows[stage].items()}), flush=True)
    print(f"\nBSDS500 test ({len(data.test_set())} images, scale {args.eval_scale}, "
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
