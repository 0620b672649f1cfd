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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stagemeter import git_revision  # noqa: E402

CE = {"name": "cross_entropy", "weight": 1.0}

#: Taps on the recipe's pair: timm ResNet-18 (CIFAR stem; layer1..4 at 64@16, 128@8, 256@4, 512@2 px
#: on 16 px digits) and torchvision MobileNetV2 0.5x (CIFAR stem; features.3 16@8, features.6 16@4,
#: features.13 48@2, features.17 160@1, features.18 1280@1).
STUDENT_STAGES = ["features.3", "features.6", "features.13", "features.18"]
TEACHER_STAGES = ["layer1", "layer2", "layer3", "layer4"]

#: method -> (its [[loss]] list, its paper). The weights are the papers' CIFAR-100 settings.
METHODS: dict[str, tuple[list[dict], str]] = {
    "kd": ([{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}},
            {"name": "cross_entropy", "weight": 0.1}], "Hinton et al., 2015 (the recipe's own loss)"),
    "kd+ls": ([{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0, "standardize": True}},
               {"name": "cross_entropy", "weight": 0.1}], "Sun et al., CVPR 2024 (logit standardization)"),
    "dkd": ([CE, {"name": "dkd", "weight": 1.0, "params": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}}],
            "Zhao et al., CVPR 2022"),
    "mlkd": ([CE, {"name": "mlkd", "weight": 1.0}], "Jin et al., CVPR 2023"),
    "ctkd": ([{"name": "ctkd", "weight": 0.9}, {"name": "cross_entropy", "weight": 0.1}], "Li et al., AAAI 2023"),
    "nkd": ([CE, {"name": "nkd", "weight": 1.0}], "Yang et al., ICCV 2023"),
    "dist": ([CE, {"name": "dist", "weight": 1.0, "params": {"beta": 2.0, "gamma": 2.0, "temperature": 4.0}}],
             "Huang et al., NeurIPS 2022"),
    "fitnets": ([CE, {"name": "fitnets", "weight": 100.0,
                      "params": {"student_layer": "features.6", "teacher_layer": "layer3"}}],
                "Romero et al., ICLR 2015"),
    "attention_transfer": ([CE, {"name": "attention_transfer", "weight": 1.0, "params": {"pairs": [
        ["features.3", "layer2"], ["features.6", "layer3"], ["features.13", "layer4"]]}}],
        "Zagoruyko & Komodakis, ICLR 2017"),
    "crd": ([CE, {"name": "crd", "weight": 0.8,
                  "params": {"student_layer": "features.18", "teacher_layer": "layer4"}}], "Tian et al., ICLR 2020"),
    # RKD and PKT on the penultimate embeddings. PKT here averages over anchors where its authors'
    # code averages over all B^2 pairs: their 30000 is 30000 / 32 (the batch) here
    "rkd": ([CE, {"name": "rkd", "weight": 1.0, "params": {"student_layer": "features.18", "teacher_layer": "layer4"}}],
            "Park et al., CVPR 2019"),
    "pkt": ([CE, {"name": "pkt", "weight": 937.5, "params": {"student_layer": "features.18", "teacher_layer": "layer4"}}],
            "Passalis & Tefas, ECCV 2018"),
    "sp": ([CE, {"name": "sp", "weight": 3000.0, "params": {"pairs": [["features.13", "layer4"]]}}],
           "Tung & Mori, ICCV 2019"),
    "nst": ([CE, {"name": "nst", "weight": 50.0, "params": {"student_layer": "features.13", "teacher_layer": "layer4"}}],
            "Huang & Wang, arXiv 2017"),
    "vid": ([CE, {"name": "vid", "weight": 1.0, "params": {"pairs": [
        ["features.3", "layer2"], ["features.6", "layer3"], ["features.13", "layer4"]]}}], "Ahn et al., CVPR 2019"),
    # the teacher's block outputs are post-ReLU here (a BasicBlock's pre-ReLU sum is no module's
    # output), so OFD's margin is 0 and its loss the partial L2 of the paper on those maps
    "ofd": ([CE, {"name": "ofd", "weight": 1e-3, "params": {"pairs": [["features.13", "layer4"]]}}],
            "Heo et al., ICCV 2019"),
    # the paraphraser trains with the student; its reconstruction keeps weight 1 under the term's 200
    "ft": ([CE, {"name": "ft", "weight": 200.0, "params": {"student_layer": "features.13", "teacher_layer": "layer4",
                                                            "reconstruction_weight": 0.005}}],
           "Kim et al., NeurIPS 2018"),
    "reviewkd": ([CE, {"name": "reviewkd", "weight": 1.0, "params": {
        "student_layers": ["features.3", "features.6", "features.13"], "teacher_layers": ["layer2", "layer3", "layer4"]}}],
        "Chen et al., CVPR 2021"),
}


def loss_of(method: str) -> list[dict]:
    return json.loads(json.dumps(METHODS[method][0]))


def method_recipe(base: dict, method: str, seed: int, cache_dir: Path) -> dict:
    recipe = json.loads(json.dumps(base))
    recipe["run"].update(seed=seed, name=f"methods-{method}".replace("+", "-"))
    recipe["loss"] = loss_of(method)
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
    methods = ["scratch"] + [m for m in METHODS if any(r["method"] == m for r in runs)]
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
        paper = "labels alone (the KD runs' baseline)" if method == "scratch" else METHODS[method][1]
        gain = row.get("gain_over_kd")
        lines.append(f"| {method} | {paper} | {row['test_top1'][0]:.4f} ± {row['test_top1'][1]:.4f} | "
                     + ("-" if gain is None else f"{gain[0]:+.4f} ± {gain[1]:.4f}") + " | "
                     + (f"{row['step_time_ratio']:.2f}" if "step_time_ratio" in row else "-")
                     + f" | {','.join(map(str, row['seeds']))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "classification.toml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
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
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = tomllib.loads(args.recipe.read_text(encoding="utf-8"))
    record = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    record.update({
        "what": f"every distillation method on {args.recipe.relative_to(ROOT)}: one shared teacher and cache, "
                "epochs chosen on val, test top-1 once with the val-best weights",
        "command": "OMP_NUM_THREADS=1 python benchmarks/methods.py --seeds " + args.seeds
                   + "".join(f" --set {o}" for o in args.overrides),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
                   f"torch {torch.__version__} CPU, one intra-op thread",
        "load": args.load,
        "methods": {m: {"loss": METHODS[m][0], "paper": METHODS[m][1]} for m in METHODS},
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
            results = kdengine.run(method_recipe(base, method, seed, runs / "cache"), overrides=args.overrides, progress=False,
                                   output_dir=runs, teacher_from=runs / teacher_dir)
            record["runs"].append(run_record(method, seed, results, time.perf_counter() - started, monitor))
            record["summary"] = summary(record)
            save(record, args.out)
            print(f"{method} seed {seed}: {record['runs'][-1]['distilled']}", flush=True)
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
