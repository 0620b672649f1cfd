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

ODS/OIS follow the protocol of published BSDS500 numbers: edge non-maximum suppression, thinning,
0.0075 x the diagonal, every annotator. ``--no-nms`` thresholds the raw maps instead (the scores
of earlier versions of this script).

``--speed`` (no run folder) times the boundary F-measure instead: one dense noisy 256x256
prediction with three annotators, then the first ``--limit`` (default 50) test images of
``--root`` with two kinds of made-up predictions (an untrained network's noise, a weak model's
blurred ground truth), through the metric as an evaluation calls it::

    python benchmarks/edges_bsds_eval.py --speed --root ../shared/data/BSDS500 --thresholds 99

``--pyedgeeval`` (no run folder) compares the ODS/OIS of the metric with those of pyEdgeEval, the
maintained Python port of the benchmark (``pip install pyEdgeEval opencv-python-headless``), on
the first ``--limit`` (default 20) test images at full size with three kinds of made-up
predictions: sharp (one annotator's boundaries), thick (every annotator's mean, blurred) and noisy
(one annotator plus smooth noise). pyEdgeEval's matcher is slow (up to a second per threshold and
annotator on a dense map)::

    python benchmarks/edges_bsds_eval.py --pyedgeeval --root ../shared/data/BSDS500 --thresholds 25
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
from kdengine.recipe.stages import plan_stages
from kdengine_edges.boundary import default_max_dist, image_counts, ods_ois, thin_stack, thresholds
from kdengine_edges.bsds import BSDS500
from kdengine_edges.metrics import BoundaryF, DiceScore
from kdengine_edges.nms import edge_nms
from kdengine_edges.readers import read_bsds_boundaries
from kdengine_edges.transforms import collate_edges

#: published BSDS500 test ODS (from ../shared/data/README.md), for orientation
PUBLISHED = {"Canny": 0.611, "HED": 0.788, "RCF": 0.806, "PiDiNet": 0.807, "human": 0.803}


def stage_models(run_dir: Path):
    """(stage, role, spec) of every trained stage in the run folder."""
    recipe = load_recipe(run_dir / "recipe.json")
    yield "teacher", "teacher", recipe.teacher
    for plan in plan_stages(recipe):  # scratch, scratch-transfer, distilled, a chain's generations
        if plan.role == "student" and (run_dir / "checkpoints" / plan.name).is_dir():
            yield plan.name, "student", plan.spec


@torch.inference_mode()
def evaluate(model, loader, thresholds: int, data: BSDS500, nms: bool = True) -> dict[str, float]:
    """Each image in its own orientation: batches mixing portrait and landscape come as lists."""
    dice, boundary = DiceScore(), BoundaryF(thresholds, nms=nms)
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
    nms = not args.no_nms
    nms_wall, nms_cpu, edges = timed(lambda: edge_nms(prob) if nms else prob, args.repeat)
    wall, cpu, counts = timed(lambda: image_counts(edges, gts, levels, max_dist), args.repeat)
    binary = edges[None] >= levels[:, None, None]
    thin_wall, thin_cpu, _ = timed(lambda: thin_stack(binary), args.repeat)
    print(f"one dense noisy {size}x{size} image, {count} annotators, {len(levels)} thresholds, "
          f"NMS {'on' if nms else 'off'} ({nms_wall:.3f} s wall) "
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
        metric = BoundaryF(args.thresholds, nms=nms)

        def run():
            metric.reset()
            for batch_logits, targets in zip(logits, batches):
                metric.update(batch_logits, targets)
            return metric.compute()

        wall, cpu, result = timed(run)
        print(f"BSDS500 test, first {images} images (scale {args.eval_scale}), {kind} "
              f"predictions, {args.thresholds} thresholds, NMS {'on' if nms else 'off'}: "
              f"{wall:.1f} s wall, {cpu:.1f} s CPU, "
              f"{wall / images:.2f} s per image; ODS {float(result['ods']):.3f}, "
              f"OIS {float(result['ois']):.3f}", flush=True)


def made_up_prediction(kind: str, annotators: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A probability map of one kind (see ``--pyedgeeval``) for ``(K, H, W)`` boolean annotators."""
    if kind == "sharp":
        return annotators[0].astype(np.float64)
    if kind == "thick":
        mean = ndimage.gaussian_filter(annotators.mean(axis=0), 2.0)
        return mean / max(float(mean.max()), 1e-6)
    noise = ndimage.gaussian_filter(rng.random(annotators.shape[1:]), 1.0)
    return 0.7 * annotators[0] + 0.3 * noise


def pyedgeeval_counts(prob: np.ndarray, annotators: np.ndarray, levels: np.ndarray,
                      nms: bool = True) -> np.ndarray:
    """pyEdgeEval's ``(T, 4)`` counts ``[cntP, sumP, cntR, sumR]`` of one image (its NMS, thinning
    and matcher, every annotator). The thresholded maps are nested, so thresholds with equally
    many pixels above them give one map: pyEdgeEval scores each distinct map once."""
    from pyEdgeEval.common.binary_label.evaluate_boundaries import (
        evaluate_boundaries_threshold_multiple_gts)
    from pyEdgeEval.preprocess import fast_nms

    edges = fast_nms(prob, r=1, s=5, m=1.01) if nms else prob
    sizes = (edges[None] >= levels[:, None, None]).reshape(len(levels), -1).sum(axis=1)
    _, first, inverse = np.unique(sizes, return_index=True, return_inverse=True)
    count_r, sum_r, count_p, sum_p = evaluate_boundaries_threshold_multiple_gts(
        levels[first], prob, list(annotators.astype(np.uint8)), max_dist=0.0075,
        apply_thinning=True, apply_nms=nms)
    return np.stack([count_p, sum_p, count_r, sum_r], axis=1)[inverse.ravel()]


def pyedgeeval_scores(per_image: np.ndarray, levels: np.ndarray) -> tuple[float, float]:
    """ODS and OIS as pyEdgeEval's ``calculate_metrics`` aggregates ``(N, T, 4)`` counts."""
    from pyEdgeEval.common.metrics import compute_rec_prec_f1, interpolated_max_scores

    cnt_p, sum_p, cnt_r, sum_r = np.moveaxis(per_image, -1, 0)
    recall, precision, _ = compute_rec_prec_f1(cnt_r.sum(0), sum_r.sum(0), cnt_p.sum(0),
                                               sum_p.sum(0))
    ods = interpolated_max_scores(levels, recall, precision)[3]
    _, _, f_image = compute_rec_prec_f1(cnt_r, sum_r, cnt_p, sum_p)
    best = per_image[np.arange(len(per_image)), f_image.argmax(axis=1)].sum(axis=0)
    ois = compute_rec_prec_f1(best[2], best[3], best[0], best[1])[2]
    return float(ods), float(ois)


def compare_with_pyedgeeval(args) -> None:
    """The metric against pyEdgeEval on whole test images (see the module docstring)."""
    files = sorted((args.root / "groundTruth" / "test").glob("*.mat"))[:args.limit or 20]
    if not files:
        raise SystemExit(f"{args.root}: no groundTruth/test/*.mat")
    levels = thresholds(args.thresholds)
    rows = {}
    for kind in ("sharp", "thick", "noisy"):
        rng = np.random.default_rng(args.seed)
        ours, theirs, ours_seconds, theirs_seconds = [], [], 0.0, 0.0
        for path in files:
            annotators = read_bsds_boundaries(path)
            prob = made_up_prediction(kind, annotators, rng)
            logits = torch.logit(torch.from_numpy(np.clip(prob, 1e-4, 1 - 1e-4)).float())
            # the metric's input, and exactly the probabilities it works on, for pyEdgeEval
            prob = torch.sigmoid(logits).double().numpy()
            metric = BoundaryF(args.thresholds, nms=not args.no_nms)
            started = time.perf_counter()
            stack = torch.from_numpy(annotators)[None].float()
            metric.update(logits[None, None], {"mask": torch.zeros(1, 1, *prob.shape),
                                               "annotators": stack})
            ours.append(metric.counts[0][0].numpy())
            ours_seconds += time.perf_counter() - started
            started = time.perf_counter()
            theirs.append(pyedgeeval_counts(prob, annotators, levels, nms=not args.no_nms))
            theirs_seconds += time.perf_counter() - started
        ours, theirs = np.stack(ours), np.stack(theirs)
        row = dict(zip(("ods", "ois"), ods_ois(ours)))
        row.update(zip(("pyedgeeval_ods", "pyedgeeval_ois"), pyedgeeval_scores(theirs, levels)))
        row["s_per_image"] = ours_seconds / len(files)
        row["pyedgeeval_s_per_image"] = theirs_seconds / len(files)
        # how far the per-threshold counts are apart, relative to pyEdgeEval's totals
        for name, column in (("cnt_p", 0), ("sum_p", 1), ("cnt_r", 2)):
            row[f"{name}_rel_diff"] = float(np.abs(ours[..., column] - theirs[..., column]).sum()
                                            / max(theirs[..., column].sum(), 1.0))
        rows[kind] = row
        print(kind, json.dumps({k: round(v, 5) for k, v in row.items()}), flush=True)
    print(f"\nBSDS500 test, first {len(files)} images at full size, {args.thresholds} thresholds, "
          f"NMS {'off' if args.no_nms else 'on'} (seed {args.seed})")
    print("| prediction | ODS | pyEdgeEval ODS | OIS | pyEdgeEval OIS | s / image | "
          "pyEdgeEval s / image |\n|---|---|---|---|---|---|---|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['ods']:.4f} | {r['pyedgeeval_ods']:.4f} | {r['ois']:.4f} | "
              f"{r['pyedgeeval_ois']:.4f} | {r['s_per_image']:.2f} | "
              f"{r['pyedgeeval_s_per_image']:.1f} |")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))
        print(f"written: {args.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--speed", action="store_true",
                        help="time the boundary F-measure on made-up predictions instead")
    parser.add_argument("--pyedgeeval", action="store_true",
                        help="compare ODS/OIS with pyEdgeEval's on made-up predictions instead")
    parser.add_argument("--no-nms", action="store_true",
                        help="threshold the raw maps (no edge non-maximum suppression)")
    parser.add_argument("--seed", type=int, default=0, help="--pyedgeeval: noise seed")
    parser.add_argument("--output", type=Path, default=None, help="--pyedgeeval: JSON file")
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
    if args.pyedgeeval:
        compare_with_pyedgeeval(args)
        return
    if args.run_dir is None:
        parser.error("give the run folder (or --speed, or --pyedgeeval)")

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
        rows[stage] = evaluate(model, loader, args.thresholds, data, nms=not args.no_nms)
        rows[stage]["eval_seconds"] = time.perf_counter() - started
        print(stage, json.dumps({k: round(v, 4) for k, v in rows[stage].items()}), flush=True)
    print(f"\nBSDS500 test ({len(data.test_set())} images, scale {args.eval_scale}, "
          f"{args.thresholds} thresholds, NMS {'off' if args.no_nms else 'on'}, "
          f"{args.which} weights)")
    print("| stage | ODS | OIS | Dice |\n|---|---|---|---|")
    for stage, r in rows.items():
        print(f"| {stage} | {r['ods']:.3f} | {r['ois']:.3f} | {r['dice']:.3f} |")
    for name, ods in PUBLISHED.items():
        print(f"| {name} (published) | {ods:.3f} | | |")
    protocol = "_nonms" if args.no_nms else ""
    out = args.run_dir / f"bsds_test_{args.which}{protocol}_{'-'.join(rows)}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
