"""Time to a distilled student: kdengine and torchdistill, each at its best, on one job.

    python benchmarks/time_to_student.py [--epochs 3] [--teacher resnet50] [--widths 1.0,0.75,0.5]
        [--views all,1] [--threads 1] [--work-dir DIR [--prepare-only]] [--json FILE]

The job, the same for both tools:

- a ResNet teacher with the CIFAR stem (``--teacher``, ResNet-50 by default), trained once by
  kdengine on scikit-learn's digits at 32x32 (``--teacher-epochs``, AdamW at batch 32, bf16,
  channels_last, cosine, chosen on val; not part of the timing) and written to a safetensors file
  that both tools read (``--work-dir`` keeps it: a later run with that folder reuses it);
- MobileNetV2 students (CIFAR stem) of the widths ``--widths``; the first width is "one student",
  all of them are "three students of one teacher";
- random crop (zero padding 4) and horizontal flip, a new draw every epoch;
- Hinton KD, 0.9 * T^2 * KL + 0.1 * cross-entropy, T = 4; AdamW, lr 1e-3, weight decay 0.01
  (``--optimizer sgd``: lr 0.1, momentum 0.9, weight decay 5e-4), constant; batch 32;
  ``--epochs`` epochs; every student scored once, at its last epoch, on the same test images.

Each tool at its best on this machine:

- torchdistill (from PyPI, in its own virtual environment that sees the project's torch build, as
  in ``vs_torchdistill.py``): its ``DistillationBox`` and the training loop of its example script,
  with per-sample torchvision transforms in the dataset (its way of augmenting). Its documentation
  offers mixed precision through Hugging Face Accelerate (the box's ``accelerator``): fp32 and bf16
  are both timed on the first student and the faster one is used for the rest. Its configuration
  has no channels_last setting, so its models run as shipped.
- kdengine: its small-hardware settings: the teacher-output cache (``teacher.cache``; the cache of
  one data stream serves every student of that stream, so the three students share the one that
  the first builds), ``teacher.precision = "auto"``, ``train.channels_last``, batched
  augmentation, evaluation at the last epoch only (``train.eval_every``), as torchdistill's loop.
  ``--views`` adds variants: ``all`` caches one epoch of augmented batches per student epoch (the
  same job as torchdistill's), a number k sets ``teacher.cache_views = k`` (the teacher runs on k
  epochs of batches that the students replay in turn: fewer augmented views, a different job,
  judged by its top-1). Each variant builds its own cache, timed in its first student.

Measured per student: wall time from process start to the scored student (imports, cache build,
evaluation and run records included), images/s (training images over that wall time, and over
the median optimizer step), peak resident memory and test top-1. Each student is a fresh process;
the tools alternate (torchdistill, kdengine) so that a shared machine's load falls on both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_torchdistill import (EpochOrder, StepClock, add_torchdistill_and_worker_arguments,  # noqa: E402
                             build_model, kdengine_version, load_average, machine, run_as_worker, run_worker,
                             torchdistill_kd_config, torchdistill_python)



# ---------------------------------------------------------------------------------------------
# workers (each in a subprocess of its own; torchdistill's runs in its environment)


def student_params(width: float) -> dict:
    return {"model": "mobilenet_v2", "width_mult": width, "cifar_stem": True}


def top1(model, images, labels, batch_size: int = 256) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(images[start:start + batch_size])
            correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(images)


class AugmentedDigits:
    """The training tensors with per-sample torchvision transforms, as a torchdistill user writes
    a dataset: random crop after zero padding 4, horizontal flip."""

    def __init__(self, images, labels):
        from torchvision.transforms import v2

        self.images, self.labels = images, labels
        self.transform = v2.Compose([v2.RandomCrop(images.shape[-1], padding=4), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def epoch_order(loader) -> EpochOrder:
    """The loader's EpochOrder sampler, also when Accelerate has wrapped the loader."""
    for candidate in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None),
                      getattr(getattr(getattr(loader, "batch_sampler", None), "batch_sampler", None), "sampler", None)):
        if isinstance(candidate, EpochOrder):
            return candidate
    raise RuntimeError(f"no EpochOrder sampler in {type(loader).__name__}")


def worker_torchdistill(plan: dict) -> dict:
    import torch
    import torchdistill
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torchdistill.core.distillation import get_distillation_box

    clock = StepClock()
    torch.set_num_threads(plan["threads"])
    work = Path(plan["work"])
    train = torch.load(work / "train.pt", weights_only=True)
    test = torch.load(work / "test.pt", weights_only=True)
    teacher = build_model(plan["teacher_params"], work / "teacher.safetensors").eval()
    set_seed(plan["seed"])  # kdengine builds its student right after seeding too
    student = build_model(plan["student_params"], work / "student-init.safetensors")
    train_config = torchdistill_kd_config(plan)
    accelerator = None
    if plan["precision"] == "bf16":
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    box = get_distillation_box(teacher, student, {"train": AugmentedDigits(train["images"], train["labels"])},
                               train_config, torch.device("cpu"), None, False, 1, accelerator=accelerator)
    for epoch in range(1, box.num_epochs + 1):
        box.pre_epoch_process(epoch=epoch)
        epoch_order(box.train_data_loader).set_epoch(epoch)
        # the loop of torchdistill's example script (examples/torchvision/image_classification.py)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
        box.post_epoch_process()
    trained = accelerator.unwrap_model(box.student_model) if accelerator is not None else box.student_model
    return {**clock.summary(plan), "top1": top1(trained.float(), test["images"], test["labels"]),
            "version": torchdistill.__version__}


def worker_kdengine(plan: dict) -> dict:
    import torch

    import kdengine

    clock = StepClock()
    torch.set_num_threads(plan["threads"])
    work = Path(plan["work"])
    results = kdengine.run(kdengine_recipe(plan), progress=False, output_dir=work / "runs")
    distilled = results.stage("distilled")
    return {**clock.summary(plan), "top1": distilled.test_last["top1"], "run_dir": results.run_dir,
            "teacher_precision": (distilled.teacher_inference or {}).get("precision"),
            "version": kdengine_version()}


def kdengine_recipe(plan: dict, *, teacher_epochs: int | None = None) -> dict:
    """The job as a kdengine recipe; with ``teacher_epochs``, the run that trains the teacher."""
    recipe = {
        "run": {"name": "time-to-student", "seed": plan["seed"]},
        "data": {"name": "digits", "params": {**plan["data_params"], "augment": {"crop_padding": 4, "flip": True}}},
        "teacher": {"name": "torchvision", "params": plan["teacher_params"],
                    "checkpoint": str(Path(plan["work"]) / "teacher.safetensors"), "cache": True,
                    "cache_dir": str(cache_dir(plan)), "precision": "auto"},
        "student": {"name": "torchvision", "params": plan.get("student_params") or student_params(0.35)},
        "train": {
            "epochs": plan["epochs"], "batch_size": plan["batch_size"], "eval_batch_size": 256,
            "optimizer": ({"name": "adamw", "lr": plan["lr"], "weight_decay": plan["weight_decay"]}
                          if plan.get("optimizer") == "adamw" else
                          {"name": "sgd", "lr": plan["lr"], "momentum": plan["momentum"],
                           "weight_decay": plan["weight_decay"]}),
            "scheduler": {"name": "none"}, "mixed_precision": "no", "channels_last": True,
            "eval_every": plan["epochs"], "baseline": False,
        },
        "loss": [{"name": "kl_div", "weight": plan["kd_weight"], "params": {"temperature": plan["temperature"]}},
                 {"name": "cross_entropy", "weight": plan["ce_weight"]}],
        "metric": [{"name": "top1"}],
    }
    if plan.get("views"):
        recipe["teacher"]["cache_views"] = plan["views"]
    if teacher_epochs is not None:  # train the teacher (chosen on val); a one-epoch student is the run's rest
        # AdamW at batch 32: a ResNet-50 from scratch learns nothing from digits' 10 steps of batch
        # 128 per epoch under the students' SGD 0.1 (top-1 0.11 after 2 epochs)
        recipe["teacher"] = {"name": "torchvision", "params": plan["teacher_params"],
                             "train": {"epochs": teacher_epochs, "eval_every": 1, "channels_last": True,
                                       "batch_size": 32, "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                                       "mixed_precision": "bf16", "scheduler": {"name": "cosine"}}}
        recipe["student"] = {"name": "torchvision", "params": student_params(0.35)}
        recipe["train"] = {**recipe["train"], "epochs": 1, "eval_every": 1}
    return recipe


def cache_dir(plan: dict) -> Path:
    """Each kdengine variant's own cache: a one-view cache could otherwise read the first epoch of
    a full one for free."""
    return Path(plan["work"]) / f"teacher-cache-views-{plan.get('views') or 'all'}"


def variant_name(views: int | None) -> str:
    return "kdengine" if views is None else f"kdengine, cache_views={views}"


WORKERS = {"kdengine": worker_kdengine, "torchdistill": worker_torchdistill}


# ---------------------------------------------------------------------------------------------
# preparation: the data both read, the teacher, the students' initial weights


def prepare(plan: dict, teacher_epochs: int) -> dict:
    import torch
    from accelerate.utils import set_seed

    import kdengine
    from kdengine.io.weights import save_weights
    from kdengine.plugins.catalog import get_catalog

    torch.set_num_threads(plan["threads"])
    work = Path(plan["work"])
    record = work / "prepared.json"
    wanted = {"teacher_params": plan["teacher_params"], "data_params": plan["data_params"],
              "teacher_epochs": teacher_epochs, "widths": plan["widths"], "seed": plan["seed"]}
    if record.is_file() and (work / "teacher.safetensors").is_file():
        previous = json.loads(record.read_text())
        if previous.get("for") == wanted:  # the same teacher job: train it once, time the students often
            print(f"  reusing the teacher prepared in {work}", flush=True)
            return {**previous["prepared"], "student_params": {float(k): v for k, v in previous["prepared"]["student_params"].items()}}
    provider = get_catalog().get("dataset", "digits")(plan["data_params"])
    for split, data in (("train", provider.train_set()), ("test", provider.test_set())):
        # what kdengine's in-memory dataset returns item by item, for the whole split at once
        images = (data.images.float() / 255 - data.mean) / data.std
        torch.save({"images": images.contiguous(), "labels": data.labels.clone()}, work / f"{split}.pt")
    started = time.perf_counter()
    results = kdengine.run(kdengine_recipe(plan, teacher_epochs=teacher_epochs), progress=False,
                           output_dir=work / "teacher-run")
    teacher = results.stage("teacher")
    shutil.copyfile(Path(results.run_dir) / "checkpoints" / "teacher" / "best.safetensors", work / "teacher.safetensors")
    inits = {}
    for width in plan["widths"]:
        set_seed(plan["seed"])  # as kdengine seeds right before it builds a student
        student = get_catalog().get("student", "torchvision")(student_params(width)).build(provider.info())
        save_weights(student, work / f"student-init-{width}.safetensors")
        inits[width] = sum(p.numel() for p in student.parameters())
    prepared = {"teacher_top1_test": teacher.test_best["top1"], "teacher_top1_val": teacher.best["top1"],
                "teacher_best_epoch": teacher.best_epoch, "teacher_params": teacher.params,
                "teacher_seconds": time.perf_counter() - started, "student_params": inits,
                "train_images": len(provider.train_set()), "test_images": len(provider.test_set())}
    record.write_text(json.dumps({"for": wanted, "prepared": prepared}, indent=1))
    return prepared


# ---------------------------------------------------------------------------------------------
# orchestration


def run_student(tool: str, python: Path, base: dict, width: float, precision: str, tag: str,
                views: int | None = None) -> dict:
    """One student by one tool in a fresh process: its numbers, or ``{"failed": last log line}``."""
    work = Path(base["work"])
    shutil.copyfile(work / f"student-init-{width}.safetensors", work / "student-init.safetensors")
    plan = {**base, "student_params": student_params(width), "precision": precision, "views": views}
    plan_file = work / f"plan-{tag}.json"
    plan_file.write_text(json.dumps(plan, indent=1))
    log = work / "logs" / f"{tag}.log"
    result = run_worker(tool, python, plan_file, work / f"{tag}.json", log, base["threads"], script=Path(__file__))
    if result is None:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        return {"failed": lines[-1] if lines else "no output", "width": width, "precision": precision}
    images = base["epochs"] * base["steps_per_epoch"] * base["batch_size"]
    result.update(width=width, precision=precision, views=views, images_per_wall_s=images / result["wall_seconds"])
    print(f"  {tag}: {result['wall_seconds']:.0f} s, top-1 {result['top1']:.4f}, "
          f"{result['images_per_s']:.0f} images/s per step, peak {result['peak_rss_mib']:.0f} MiB", flush=True)
    return result


def summary_rows(runs: dict[str, list[dict]]) -> list[str]:
    """The table: one student, then all of them, for each tool; the speed-up is torchdistill's
    total wall time over the tool's, for the same students."""
    lines = ["| tool | students | wall s (total) | per student (s) | images/s (wall) | images/s (median step) "
             "| peak RSS MiB | test top-1 | speed-up vs torchdistill |", "|" + " --- |" * 9]
    counts = sorted({1, *(len(results) for results in runs.values())})
    for count in counts:
        reference = runs.get("torchdistill", [])[:count]
        for tool, results in runs.items():
            if len(results) < count:
                continue
            chosen = results[:count]
            wall = sum(r["wall_seconds"] for r in chosen)
            per_student = ", ".join(f"{r['wall_seconds']:.0f}" for r in chosen)
            accuracy = ", ".join(f"{r['top1']:.4f}" for r in chosen)
            speed_up = (f"{sum(r['wall_seconds'] for r in reference) / wall:.2f}x"
                        if len(reference) == count else "-")
            lines.append(
                f"| {tool} | {count} | {wall:.0f} | {per_student} | "
                f"{statistics.median(r['images_per_wall_s'] for r in chosen):.0f} | "
                f"{statistics.median(r['images_per_s'] for r in chosen):.0f} | "
                f"{max(r['peak_rss_mib'] for r in chosen):.0f} | {accuracy} | {speed_up} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of every student")
    parser.add_argument("--teacher", default="resnet50", help="torchvision ResNet (CIFAR stem)")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--widths", default="1.0,0.75,0.5", help="MobileNetV2 width of each student")
    parser.add_argument("--train-size", type=int, default=1280, help="digits training images (a multiple of the batch)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                        help="the students' optimizer: AdamW lr 1e-3, weight decay 0.01, or SGD lr 0.1, momentum "
                             "0.9, weight decay 5e-4 (constant lr; SGD 0.1 leaves a MobileNetV2 at chance after "
                             "50 steps on digits)")
    parser.add_argument("--views", default="all,1",
                        help="kdengine variants: 'all' (a cache epoch per student epoch, the same job as "
                             "torchdistill's) and/or numbers of cached epochs (teacher.cache_views)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every process")
    parser.add_argument("--td-precision", default="fp32,bf16",
                        help="torchdistill precisions to time on the first student (the faster is kept)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write every run's numbers here")
    parser.add_argument("--prepare-only", action="store_true",
                        help="train the teacher into --work-dir and stop (a later run with that folder reuses it)")
    add_torchdistill_and_worker_arguments(parser, WORKERS)
    args = parser.parse_args(argv)
    if run_as_worker(args, WORKERS):
        return

    widths = [float(w) for w in args.widths.split(",") if w.strip()]
    try:
        views = [None if v.strip() == "all" else int(v) for v in args.views.split(",") if v.strip()]
    except ValueError:
        parser.error("--views: 'all' and/or whole numbers, comma-separated")
    td_precisions = [p.strip() for p in args.td_precision.split(",") if p.strip()]
    if not widths or not set(td_precisions) <= {"fp32", "bf16"} or not td_precisions:
        parser.error("--widths takes at least one width; --td-precision fp32 and/or bf16")
    if args.train_size % args.batch_size or args.train_size + 2 * 200 > 1797:
        parser.error("--train-size: a multiple of --batch-size, at most 1397 (val and test keep 200 each)")
    if args.prepare_only and args.work_dir is None:
        parser.error("--prepare-only needs --work-dir (the folder a later run reuses)")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="kdengine-time-to-student-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    base = {
        "work": str(work.resolve()), "seed": 0, "threads": args.threads, "batch_size": args.batch_size,
        "epochs": args.epochs, "steps_per_epoch": args.train_size // args.batch_size, "warmup": 2,
        "data_params": {"image_size": 32, "train_size": args.train_size, "val_size": 200, "test_size": 200},
        "teacher_params": {"model": args.teacher, "cifar_stem": True}, "widths": widths,
        "temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1, "optimizer": args.optimizer,
        **({"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.01} if args.optimizer == "adamw" else
           {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
    }
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    info = machine()
    print(f"training the {args.teacher} teacher ({args.teacher_epochs} epochs) ...", flush=True)
    prepared = prepare(base, args.teacher_epochs)
    print(f"  teacher: test top-1 {prepared['teacher_top1_test']:.4f} (val-best epoch "
          f"{prepared['teacher_best_epoch']}), {prepared['teacher_seconds']:.0f} s", flush=True)
    if args.prepare_only:
        return
    for old in work.glob("teacher-cache*"):  # every cache is built, and timed, by this run
        shutil.rmtree(old)
    pythons = {"kdengine": Path(sys.executable), "torchdistill": torchdistill_python(args.cache.resolve(), args.torchdistill)}
    load_before = load_average()

    # torchdistill's precision: the faster of those timed on the first student
    trials = {p: run_student("torchdistill", pythons["torchdistill"], base, widths[0], p, f"torchdistill-{p}-{widths[0]}")
              for p in td_precisions}
    timed = {p: r for p, r in trials.items() if "failed" not in r}
    if not timed:
        raise SystemExit(f"torchdistill failed at every precision; logs in {work / 'logs'}")
    best = min(timed, key=lambda p: timed[p]["wall_seconds"])
    runs: dict[str, list[dict]] = {"torchdistill": [timed[best]], **{variant_name(v): [] for v in views}}
    for i, width in enumerate(widths):
        if i:
            result = run_student("torchdistill", pythons["torchdistill"], base, width, best, f"torchdistill-{best}-{width}")
            if "failed" not in result:
                runs["torchdistill"].append(result)
        for v in views:
            result = run_student("kdengine", pythons["kdengine"], base, width, "auto",
                                 f"kdengine-views-{v or 'all'}-{width}", views=v)
            if "failed" not in result:
                runs[variant_name(v)].append(result)

    trial_times = ", ".join(f"{p} {r['wall_seconds']:.0f} s" if "failed" not in r else f"{p} failed: {r['failed']}"
                            for p, r in trials.items())
    print()
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), torch {info['torch']}, "
          f"python {info['python']}, {args.threads} threads per process; load average {load_before} before, "
          f"{load_average()} after")
    print(f"job: {args.teacher} teacher ({prepared['teacher_params'] / 1e6:.1f}M params, test top-1 "
          f"{prepared['teacher_top1_test']:.4f}) -> MobileNetV2 {', '.join(map(str, widths))}, CIFAR stems, digits 1x32x32 "
          f"({prepared['train_images']} train / {prepared['test_images']} test), crop + flip, batch {args.batch_size}, {args.optimizer} lr {base['lr']}, "
          f"{args.epochs} epochs; torchdistill {runs['torchdistill'][0]['version']} in {best} "
          f"({trial_times} on the first student), "
          f"kdengine {kdengine_version()} with the teacher cache, precision auto, channels_last")
    print()
    print("\n".join(summary_rows(runs)))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "plan": base, "prepared": prepared, "torchdistill_precision": best,
                                         "torchdistill_trials": trials, "runs": runs,
                                         "load_average": {"before": load_before, "after": load_average()}}, indent=1))
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
