"""The method zoo compared on one recipe: every built-in distillation method trains the same student
from the same teacher over the same seeds, and a table gives each method's test top-1, its gain over
Hinton's KD and its training step time relative to KD.

How the comparison is kept fair and honest:

- one teacher for every method and seed: trained once by the recipe (its own ``teacher.train``
  budget), then given to every run as ``teacher.checkpoint``; its outputs and tapped features come
  from the teacher-output cache, shared by all runs (one cache per seed and per set of taps);
- every method runs on every seed with the recipe's budget, optimizer and augmentation; only the
  ``[[loss]]`` list changes. Feature and relation methods add their term to cross-entropy at the
  weight their paper (or its reference code) uses on CIFAR-100; nothing is tuned here;
- the epoch is chosen on val (the recipe's monitor), test is scored once with the val-best weights
  (and once with the last, also recorded); the scratch student (labels alone) comes from the KD
  runs' baseline stage;
- step time is the median over epochs of the epoch's training seconds (the teacher's forward pass
  is read from the cache, so this is the student-side cost of the method: its own heads and
  adapters included), as a ratio to KD's in the same seed; the machine is shared, so ratios only.

Usage (one thread)::

    OMP_NUM_THREADS=1 python benchmarks/methods.py --seeds 0,1,2 --load "what else ran"
    python benchmarks/methods.py --table          # the table from the committed JSON

The published CIFAR-100 pairs (a GPU and the data; targets in each recipe's header)::

    python benchmarks/methods.py --recipe recipes/cifar100-resnet32x4-resnet8x4.toml \
        --out benchmarks/results/methods-cifar100-resnet32x4-resnet8x4.json
    python benchmarks/methods.py --recipe recipes/cifar100-resnet50-mobilenetv2.toml \
        --out benchmarks/results/methods-cifar100-resnet50-mobilenetv2.json

Each recipe's layers for the feature and relation methods are in ``PAIRS``.

The JSON (``--out``) is rewritten after every run, so an interrupted benchmark goes on where it
stopped (a method and seed already recorded is not run again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stagemeter import git_revision  # noqa: E402

DEFAULT_RECIPE = ROOT / "recipes" / "classification.toml"
CE = {"name": "cross_entropy", "weight": 1.0}


@dataclass(frozen=True)
class Pair:
    """Where a teacher/student pair's methods tap: three (student, teacher) layers at matching
    resolutions, shallow to deep; the penultimate embeddings; the deepest pre-activation pair."""

    stages: tuple[tuple[str, str], tuple[str, str], tuple[str, str]]
    embedding: tuple[str, str]
    pre_activation: tuple[str, str]
    note: str


#: The pairs of the recipes benchmarked, by recipe file name.
PAIRS = {
    # timm ResNet-18 (CIFAR stem; layer1..4 at 64@16, 128@8, 256@4, 512@2 px on 16 px digits) and
    # torchvision MobileNetV2 0.5x (CIFAR stem; features.3 16@8, features.6 16@4, features.13 48@2,
    # features.18 1280@1). A BasicBlock's pre-ReLU sum is no module's output, so OFD taps post-ReLU
    # maps (its margin is then 0 and its loss the paper's partial L2 on them).
    "classification.toml": Pair(
        stages=(("features.3", "layer2"), ("features.6", "layer3"), ("features.13", "layer4")),
        embedding=("features.18", "layer4"), pre_activation=("features.13", "layer4"),
        note="ResNet-18 -> MobileNetV2 0.5x on digits"),
    # cifar_resnet: layer1..3 at 64@32, 128@16, 256@8 px in both; the pooled embedding is `flatten`;
    # each block's residual sum before its ReLU is `preact`
    "cifar100-resnet32x4-resnet8x4.toml": Pair(
        stages=(("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")),
        embedding=("flatten", "flatten"), pre_activation=("layer3.0.preact", "layer3.4.preact"),
        note="ResNet-32x4 -> ResNet-8x4 on CIFAR-100"),
    # timm ResNet-50 (CIFAR stem; layer2..4 at 512@16, 1024@8, 2048@4 px; global_pool the 2048-d
    # embedding) and CRD's CIFAR MobileNetV2 0.5x (features.6 16@16, features.13 48@8, features.17
    # 160@4, features.18 1280@4); timm's bottleneck applies its last ReLU in place, so OFD's
    # teacher map is post-ReLU here too
    "cifar100-resnet50-mobilenetv2.toml": Pair(
        stages=(("features.6", "layer2"), ("features.13", "layer3"), ("features.17", "layer4")),
        embedding=("features.18", "global_pool"), pre_activation=("features.17", "layer4"),
        note="ResNet-50 -> MobileNetV2 0.5x on CIFAR-100"),
}

#: method -> its paper.
PAPERS = {
    "kd": "Hinton et al., 2015 (the recipe's own loss)",
    "kd+ls": "Sun et al., CVPR 2024 (logit standardization)",
    "dkd": "Zhao et al., CVPR 2022", "mlkd": "Jin et al., CVPR 2023", "ctkd": "Li et al., AAAI 2023",
    "nkd": "Yang et al., ICCV 2023", "dist": "Huang et al., NeurIPS 2022", "fitnets": "Romero et al., ICLR 2015",
    "attention_transfer": "Zagoruyko & Komodakis, ICLR 2017", "crd": "Tian et al., ICLR 2020",
    "rkd": "Park et al., CVPR 2019", "pkt": "Passalis & Tefas, ECCV 2018", "sp": "Tung & Mori, ICCV 2019",
    "nst": "Huang & Wang, arXiv 2017", "vid": "Ahn et al., CVPR 2019", "ofd": "Heo et al., ICCV 2019",
    "ft": "Kim et al., NeurIPS 2018", "reviewkd": "Chen et al., CVPR 2021",
}


def method_losses(pair: Pair, batch_size: int, epochs: int) -> dict[str, list[dict]]:
    """Each method's ``[[loss]]`` list on ``pair`` at the recipe's batch size and epochs: the
    weights are the papers' (or their reference code's) CIFAR-100 settings, nothing tuned here."""
    (s1, t1), (s2, t2), (s3, t3) = pair.stages
    s_emb, t_emb = pair.embedding
    s_pre, t_pre = pair.pre_activation

    def with_ce(name: str, weight: float, **params) -> list[dict]:
        return [CE, {"name": name, "weight": weight, "params": params}]

    def stage_pairs() -> list[list[str]]:
        return [[s, t] for s, t in pair.stages]

    return {
        "kd": [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
               {"name": "cross_entropy", "weight": 0.1}],
        # the authors' KD setting with their z-score: weight 9 at base temperature 2, CE 0.1
        "kd+ls": [{"name": "kl_div", "weight": 9.0, "params": {"temperature": 2.0, "standardize": True}},
                  {"name": "cross_entropy", "weight": 0.1}],
        # DKD's weight warms up over its first 20 of 240 epochs (mdistiller): a twelfth of the run
        "dkd": [CE, {"name": "dkd", "weight": 1.0, "params": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0},
                     "warmup_epochs": max(1, round(epochs / 12))}],
        "mlkd": with_ce("mlkd", 1.0),
        "ctkd": [{"name": "ctkd", "weight": 0.9}, {"name": "cross_entropy", "weight": 0.1}],
        "nkd": with_ce("nkd", 1.0),
        "dist": with_ce("dist", 1.0, beta=2.0, gamma=2.0, temperature=4.0),
        "fitnets": with_ce("fitnets", 100.0, student_layer=s2, teacher_layer=t2),
        "attention_transfer": with_ce("attention_transfer", 1.0, pairs=stage_pairs()),
        "crd": with_ce("crd", 0.8, student_layer=s_emb, teacher_layer=t_emb),
        "rkd": with_ce("rkd", 1.0, student_layer=s_emb, teacher_layer=t_emb),
        # PKT here averages over anchors where its authors' code averages over all B^2 pairs: their
        # 30000 is 30000 / B here
        "pkt": with_ce("pkt", 30000.0 / batch_size, student_layer=s_emb, teacher_layer=t_emb),
        "sp": with_ce("sp", 3000.0, pairs=[[s3, t3]]),
        "nst": with_ce("nst", 50.0, student_layer=s3, teacher_layer=t3),
        "vid": with_ce("vid", 1.0, pairs=stage_pairs()),
        "ofd": with_ce("ofd", 1e-3, pairs=[[s_pre, t_pre]]),
        # the paraphraser trains with the student; its reconstruction keeps weight 1 under the term's 200
        "ft": with_ce("ft", 200.0, student_layer=s3, teacher_layer=t3, reconstruction_weight=0.005),
        "reviewkd": with_ce("reviewkd", 1.0, student_layers=[s1, s2, s3], teacher_layers=[t1, t2, t3]),
    }


def pair_of(recipe: Path) -> Pair:
    if recipe.name not in PAIRS:
        raise SystemExit(f"{recipe}: no tap layout for this recipe's pair in benchmarks/methods.py PAIRS "
                         f"(known: {', '.join(PAIRS)})")
    return PAIRS[recipe.name]


def method_recipe(base: dict, losses: list[dict], method: str, seed: int, cache_dir: Path) -> dict:
    recipe = json.loads(json.dumps(base))
    recipe["run"].update(seed=seed, name=f"methods-{method}".replace("+", "-"))
    recipe["loss"] = json.loads(json.dumps(losses))
    recipe["train"]["baseline"] = method == "kd"  # the scratch rows come from the KD runs
    recipe["teacher"].update(cache=True, cache_dir=str(cache_dir))
    return recipe


def train_teacher(base: dict, runs: Path, overrides: list[str]) -> Path:
    """The one teacher: the recipe run with a one-epoch student (the teacher keeps its own
    ``teacher.train`` budget); that student is not reported."""
    recipe = json.loads(json.dumps(base))
    recipe["run"]["name"] = "methods-teacher"
    recipe["train"].update(epochs=1, baseline=False, report_epochs=[])
    import kdengine

    return Path(kdengine.run(recipe, overrides=[*overrides, "train.epochs=1"], progress=False, output_dir=runs).run_dir)


def run_record(method: str, seed: int, results, wall: float, monitor: str) -> dict:
    stages = {s.stage: s for s in results.stages}
    record = {"method": method, "seed": seed, "run": Path(results.run_dir).name, "wall_seconds": round(wall, 1)}
    for name in ("distilled", "scratch"):
        if name not in stages:
            continue
        stage = stages[name]
        epoch_seconds = [e.train_seconds for e in stage.history if e.train_seconds > 0]
        record[name] = {
            "best_epoch": stage.best_epoch,
            "val_best": round(stage.best[monitor], 4),
            "test_best": round(stage.test_best[monitor], 4),
            "test_last": round(stage.test_last[monitor], 4),
            "median_epoch_train_seconds": round(statistics.median(epoch_seconds), 3),
        }
    return record


def save(record: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary(record: dict) -> dict:
    """Per method: test top-1 (val-best weights) mean and std over seeds, the per-seed paired gain
    over KD, and the median over seeds of its step-time ratio to KD's."""
    runs = record["runs"]
    by = {(r["method"], r["seed"]): r for r in runs}
    rows = {}
    methods = ["scratch"] + [m for m in PAPERS if any(r["method"] == m for r in runs)]
    for method in methods:
        source, stage = ("kd", "scratch") if method == "scratch" else (method, "distilled")
        seeds = sorted(s for (m, s) in by if m == source)
        if not seeds:
            continue
        tests = [by[(source, s)][stage]["test_best"] for s in seeds]
        row = {"seeds": seeds, "test_top1": mean_std(tests), "test_top1_last": mean_std(
            [by[(source, s)][stage]["test_last"] for s in seeds])}
        paired = [s for s in seeds if ("kd", s) in by]
        if paired:
            row["gain_over_kd"] = mean_std([by[(source, s)][stage]["test_best"] - by[("kd", s)]["distilled"]["test_best"]
                                            for s in paired])
            row["step_time_ratio"] = statistics.median(
                by[(source, s)][stage]["median_epoch_train_seconds"] / by[("kd", s)]["distilled"]["median_epoch_train_seconds"]
                for s in paired)
        rows[method] = {k: [round(x, 4) for x in v] if isinstance(v, tuple) else (round(v, 3) if isinstance(v, float) else v)
                        for k, v in row.items()}
    return rows


def markdown(record: dict) -> str:
    lines = ["| method | paper | test top-1 (val-best), mean ± std | gain over KD | step time / KD | seeds |",
             "|---|---|---|---|---|---|"]
    for method, row in summary(record).items():
        paper = "labels alone (the KD runs' baseline)" if method == "scratch" else PAPERS[method]
        gain = row.get("gain_over_kd")
        lines.append(f"| {method} | {paper} | {row['test_top1'][0]:.4f} ± {row['test_top1'][1]:.4f} | "
                     + ("-" if gain is None else f"{gain[0]:+.4f} ± {gain[1]:.4f}") + " | "
                     + (f"{row['step_time_ratio']:.2f}" if "step_time_ratio" in row else "-")
                     + f" | {','.join(map(str, row['seeds']))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="one of the recipes of PAIRS")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(PAPERS), help="comma-separated, from: " + ", ".join(PAPERS))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "methods", help="run folders and the shared cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "methods-classification.json")
    parser.add_argument("--load", default="not recorded", help="what else was running on the machine")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for every run (a smoke test: --set train.epochs=1)")
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)

    if args.table:
        print(markdown(json.loads(args.out.read_text(encoding="utf-8"))))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in PAPERS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(PAPERS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = tomllib.loads(args.recipe.read_text(encoding="utf-8"))
    table = method_losses(pair_of(args.recipe), base["train"]["batch_size"], base["train"]["epochs"])
    record = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    record.update({
        "what": f"every distillation method on {args.recipe.resolve().relative_to(ROOT)}: one shared teacher and cache, "
                "epochs chosen on val, test top-1 once with the val-best weights",
        "command": "OMP_NUM_THREADS=1 python benchmarks/methods.py"
                   + ("" if args.recipe.resolve() == DEFAULT_RECIPE else f" --recipe {args.recipe.relative_to(ROOT)}")
                   + f" --seeds {args.seeds}" + "".join(f" --set {o}" for o in args.overrides),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}, "
                   + (torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU, one intra-op thread"),
        "load": args.load,
        "methods": {m: {"loss": table[m], "paper": PAPERS[m]} for m in PAPERS},
    })
    record.setdefault("runs", [])
    record.setdefault("git_revisions", [])
    if git_revision() not in record["git_revisions"]:
        record["git_revisions"].append(git_revision())
    runs = args.runs.resolve()
    teacher_dir = Path(record["teacher_run"]) if "teacher_run" in record else None
    if teacher_dir is None or not (runs / teacher_dir).exists():
        teacher_dir = train_teacher(base, runs, args.overrides).relative_to(runs)
        record["teacher_run"] = str(teacher_dir)
        teacher = json.loads((runs / teacher_dir / "results.json").read_text(encoding="utf-8"))
        record["teacher"] = next({k: s[k] for k in ("model", "params", "best_epoch", "best", "test_best", "test_last")}
                                 for s in teacher["stages"] if s["stage"] == "teacher")
        save(record, args.out)

    import kdengine

    monitor = base["train"].get("monitor", "top1")
    for seed in seeds:  # seed-major: an interrupted benchmark still compares every method on its first seeds
        for method in methods:
            if any(r["method"] == method and r["seed"] == seed for r in record["runs"]):
                continue
            started = time.perf_counter()
            results = kdengine.run(method_recipe(base, table[method], method, seed, runs / "cache"), overrides=args.overrides, progress=False,
                                   output_dir=runs, teacher_from=runs / teacher_dir)
            record["runs"].append(run_record(method, seed, results, time.perf_counter() - started, monitor))
            record["summary"] = summary(record)
            save(record, args.out)
            print(f"{method} seed {seed}: {record['runs'][-1]['distilled']}", flush=True)
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
