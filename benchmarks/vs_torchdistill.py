"""kdengine vs torchdistill vs a minimal hand-written PyTorch loop: distillation training speed on
identical work.

    python benchmarks/vs_torchdistill.py [--rounds 3] [--epochs 1] [--precision fp32,bf16]

The same work for every contender:

- models: a ResNet-18 teacher and a MobileNetV2 student, both with the CIFAR stem, built once by
  kdengine's ``torchvision`` model factory. The teacher's weights (batch-norm statistics
  calibrated on a few batches) and the student's initial weights are written to files that every
  contender loads; kdengine builds its student from the run seed, and every contender's
  parameters are fingerprinted at its first optimizer step and compared with the file's;
- data: scikit-learn's digits at 32x32 (kdengine's ``digits`` dataset; the tensors are exported
  for the other two), batch 128, the same shuffled order every epoch, no augmentation;
- loss: Hinton KD, 0.9 * T^2 * KL(teacher_T || student_T) + 0.1 * cross-entropy, T = 4;
- optimizer: SGD, lr 0.1, momentum 0.9, weight decay 5e-4, constant lr;
- precision: fp32 (and bf16 autocast with ``--precision fp32,bf16``); the teacher is frozen, in
  eval mode, without gradients.

The contenders: kdengine through its Python API (``kdengine.run`` with the teacher given as a
checkpoint, no baseline stage); torchdistill from PyPI, installed into its own virtual environment
(created on the first run under ``--cache``) and driven through its ``DistillationBox`` with a KD
configuration like its sample configurations (``WeightedSumLoss`` of ``KDLoss``); and a minimal
loop of plain PyTorch. Each run is a fresh subprocess with the same thread count; rounds are
interleaved (kdengine, torchdistill, minimal, kdengine, ...) and the table shows the median.

Timing: a global optimizer-step hook (``torch.optim``) stamps the end of every optimizer step,
so every contender is timed the same way without touching its loop. Each interval between two
consecutive stamps is one whole training step (data loading, teacher and student forward,
backward, optimizer, per-step bookkeeping). The first ``--warmup`` steps and the interval across
each epoch boundary (evaluation, checkpoints, logging) are left out. A run's images/s is the batch
size over its median step time (robust to bursts of other processes on a shared machine; the
mean-based rate is in ``--json``); the table gives the median over the rounds and every round's
value. Peak memory is the subprocess's peak resident set (``ru_maxrss``).

torchdistill's environment: its own virtual environment, with the project's own torch and
torchvision made visible through a ``.pth`` file, so that both frameworks run on the very same
torch build (identical kernels); pip installs torchdistill and whatever else it needs into the
environment, with torch and torchvision pinned to the project's versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("kdengine", "torchdistill", "minimal")
DIGITS_IMAGES = 1797  # scikit-learn's digits; at most 1700 of them for training


# ---------------------------------------------------------------------------------------------
# shared by every worker (the torchdistill worker runs in its own environment: torch only)


def fingerprint(params) -> str:
    """sha256 of the parameters' values, in order."""
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class StepClock:
    """Stamps the end of every optimizer step of the process (a global torch.optim hook) and
    fingerprints the parameters the first optimizer updates, before its first step."""

    def __init__(self):
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []
        self.first_params: str | None = None
        self.threads: int | None = None
        self.torch = torch
        register_optimizer_step_pre_hook(self._pre)
        register_optimizer_step_post_hook(self._post)

    def _pre(self, optimizer, args, kwargs):
        if self.first_params is None:
            self.first_params = fingerprint(p for g in optimizer.param_groups for p in g["params"])
            self.threads = self.torch.get_num_threads()

    def _post(self, optimizer, args, kwargs):
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())

    def summary(self, plan: dict) -> dict:
        """Images/s over the measured intervals (see the module docstring): from the median step
        time (robust to other processes' bursts on a shared machine), and the plain mean."""
        steps_per_epoch, warmup = plan["steps_per_epoch"], plan["warmup"]

        def measured_intervals(stamps):
            intervals = enumerate((b - a for a, b in zip(stamps, stamps[1:])), start=1)
            return [d for i, d in intervals if i >= warmup and i % steps_per_epoch != 0]

        measured, cpu = measured_intervals(self.stamps), measured_intervals(self.cpu_stamps)
        return {
            "steps": len(self.stamps),
            "measured_steps": len(measured),
            "measured_seconds": sum(measured),
            "images_per_s": plan["batch_size"] / statistics.median(measured) if measured else None,
            "images_per_s_mean": plan["batch_size"] * len(measured) / sum(measured) if measured else None,
            "images_per_cpu_s": plan["batch_size"] / statistics.median(cpu) if cpu else None,
            "init_fingerprint": self.first_params,
            "intervals": [round(d, 4) for d in measured],
            "cpu_intervals": [round(d, 4) for d in cpu],
            "threads": self.threads,
            "vm_hwm_mib": own_peak_rss_mib(),
        }


def own_peak_rss_mib() -> float | None:
    """This process's peak resident set since its exec (``VmHWM``). Not ``ru_maxrss``: Linux
    carries the forking parent's high-water mark into it across exec, so every worker of a large
    parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class EpochOrder:
    """The shuffled order of kdengine's training sampler, a function of (seed, epoch), as a
    plain index sampler: every contender sees the same batches in the same order."""

    def __init__(self, data_source, seed: int = 0):
        self.length = len(data_source)
        self.seed = seed
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


def autocast(plan: dict):
    import contextlib

    import torch

    if plan["precision"] == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(params: dict, weights: Path):
    """A model of kdengine's ``torchvision`` factory (CIFAR stem) with the weights of a file.

    The factory is imported from the source tree, not through the plugin catalog, so that
    torchdistill's environment (which sees the project's packages but not its editable install)
    builds exactly the same architecture; the weights are read as tensors only, never unpickled."""
    for path in (ROOT / "plugins", ROOT):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from kdengine import DataInfo
    from kdengine.io.weights import load_weights
    from kdengine_classification.models import TorchvisionModel

    info = DataInfo(task="classification", in_channels=1, num_classes=10)
    model = TorchvisionModel(params).build(info)
    load_weights(model, weights)
    return model


def load_common(plan: dict):
    import torch

    torch.set_num_threads(plan["threads"])
    torch.manual_seed(plan["seed"])
    work = Path(plan["work"])
    data = torch.load(work / "train.pt", weights_only=True)
    teacher = build_model(plan["teacher_params"], work / "teacher.safetensors")
    student = build_model(plan["student_params"], work / "student.safetensors")
    return data, teacher, student


# ---------------------------------------------------------------------------------------------
# the three contenders, each in a subprocess of its own


def worker_minimal(plan: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    clock = StepClock()
    data, teacher, student = load_common(plan)
    teacher.eval().requires_grad_(False)
    student.train()
    t = plan["temperature"]
    optimizer = torch.optim.SGD(student.parameters(), lr=plan["lr"], momentum=plan["momentum"],
                                weight_decay=plan["weight_decay"])
    dataset = TensorDataset(data["images"], data["labels"])
    order = EpochOrder(dataset, plan["seed"])
    loader = DataLoader(dataset, batch_size=plan["batch_size"], sampler=order, drop_last=True)
    epoch_losses = []
    for epoch in range(1, plan["epochs"] + 1):
        order.set_epoch(epoch)
        losses = []
        for inputs, targets in loader:
            with autocast(plan):
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                logits = student(inputs)
                kd = F.kl_div(F.log_softmax(logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                              reduction="batchmean", log_target=True) * (t * t)
                loss = plan["kd_weight"] * kd + plan["ce_weight"] * F.cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        epoch_losses.append(float(torch.stack(losses).mean()))
    return {**clock.summary(plan), "epoch_losses": epoch_losses, "version": torch.__version__}


def torchdistill_kd_config(plan: dict) -> dict:
    """torchdistill's training configuration for the plan's Hinton KD, shaped like its sample
    configurations (``WeightedSumLoss`` of ``KDLoss``, ``SGD`` or, with ``plan["optimizer"] = "adamw"``,
    ``AdamW``), over the shared epoch order."""
    kd_loss = {
        "key": "KDLoss",
        "kwargs": {"student_module_path": ".", "student_module_io": "output",
                   "teacher_module_path": ".", "teacher_module_io": "output",
                   # torchdistill's KDLoss: alpha * CE + beta * T^2 * KL
                   "temperature": plan["temperature"], "alpha": plan["ce_weight"], "beta": plan["kd_weight"],
                   "reduction": "batchmean"},
    }
    return {
        "num_epochs": plan["epochs"],
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": EpochOrder, "kwargs": {"seed": plan["seed"]}},
            "kwargs": {"batch_size": plan["batch_size"], "num_workers": 0, "drop_last": True},
        },
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False,
                    "frozen_modules": []},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [],
                    "requires_grad": True, "frozen_modules": []},
        "optimizer": ({"key": "AdamW", "kwargs": {"lr": plan["lr"], "weight_decay": plan["weight_decay"]}}
                      if plan.get("optimizer") == "adamw" else
                      {"key": "SGD", "kwargs": {"lr": plan["lr"], "momentum": plan["momentum"],
                                                "weight_decay": plan["weight_decay"]}}),
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": kd_loss, "weight": 1.0}}}},
    }


def add_torchdistill_and_worker_arguments(parser, workers) -> None:
    """torchdistill's environment, and the hidden arguments of a worker subprocess."""
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench-venvs",
                        help="where torchdistill's virtual environment lives (created if missing)")
    parser.add_argument("--torchdistill", default="torchdistill", help="pip requirement for torchdistill")
    parser.add_argument("--worker", choices=list(workers), help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)


def run_as_worker(args, workers) -> bool:
    """In a worker subprocess: run its worker on the plan, write the result, return True."""
    if not args.worker:
        return False
    plan = json.loads(args.plan.read_text())
    args.result.write_text(json.dumps(workers[args.worker](plan)))
    return True


def worker_torchdistill(plan: dict) -> dict:
    import torch
    import torchdistill
    from torch.utils.data import TensorDataset
    from torchdistill.core.distillation import get_distillation_box

    clock = StepClock()
    data, teacher, student = load_common(plan)
    # torchdistill leaves the teacher's mode to the caller (its example script never sets it, so
    # its batch-norm layers run in training mode); identical work means a teacher in eval mode.
    teacher.eval()
    train_config = torchdistill_kd_config(plan)
    box = get_distillation_box(teacher, student, {"train": TensorDataset(data["images"], data["labels"])},
                               train_config, torch.device("cpu"), None, False, 1)
    epoch_losses = []
    for epoch in range(1, box.num_epochs + 1):
        box.pre_epoch_process(epoch=epoch)
        box.train_data_loader.sampler.set_epoch(epoch)
        losses = []
        # the loop of torchdistill's example script (examples/torchvision/image_classification.py)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            with autocast(plan):
                loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            losses.append(loss.item())
        box.post_epoch_process()
        epoch_losses.append(sum(losses) / len(losses))
    return {**clock.summary(plan), "epoch_losses": epoch_losses, "version": torchdistill.__version__}


def worker_kdengine(plan: dict) -> dict:
    import torch

    import kdengine

    clock = StepClock()
    torch.set_num_threads(plan["threads"])
    work = Path(plan["work"])
    recipe = kdengine_recipe(plan)
    results = kdengine.run(recipe, progress=False, output_dir=work / "runs")
    run_dir = Path(results.run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r["stage"] == "distilled"]
    return {**clock.summary(plan), "epoch_losses": [r["losses"]["total"] for r in records],
            "epoch_seconds": [r["seconds"] for r in records], "version": kdengine_version()}


def kdengine_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kdengine")
    except PackageNotFoundError:
        return "source"


def kdengine_recipe(plan: dict) -> dict:
    return {
        "run": {"name": f"bench-{plan['precision']}", "seed": plan["seed"]},
        "data": {"name": "digits", "params": plan["data_params"]},
        "teacher": {"name": "torchvision", "params": plan["teacher_params"],
                    "checkpoint": str(Path(plan["work"]) / "teacher.safetensors")},
        "student": {"name": "torchvision", "params": plan["student_params"]},
        "train": {
            "epochs": plan["epochs"], "batch_size": plan["batch_size"], "eval_batch_size": plan["batch_size"],
            "optimizer": {"name": "sgd", "lr": plan["lr"], "momentum": plan["momentum"],
                          "weight_decay": plan["weight_decay"]},
            "scheduler": {"name": "none"},
            "mixed_precision": "bf16" if plan["precision"] == "bf16" else "no",
            "channels_last": False,
            "baseline": False,
        },
        "loss": [{"name": "kl_div", "weight": plan["kd_weight"], "params": {"temperature": plan["temperature"]}},
                 {"name": "cross_entropy", "weight": plan["ce_weight"]}],
        "metric": [{"name": "top1"}],
    }


WORKERS = {"kdengine": worker_kdengine, "torchdistill": worker_torchdistill, "minimal": worker_minimal}


# ---------------------------------------------------------------------------------------------
# preparation: data, weights and torchdistill's environment


def prepare(plan: dict) -> dict:
    """Export the training tensors, the teacher's weights and the student's initial weights."""
    import torch
    from accelerate.utils import set_seed

    from kdengine.plugins.catalog import get_catalog
    from kdengine.io.weights import save_weights

    torch.set_num_threads(plan["threads"])
    work = Path(plan["work"])
    catalog = get_catalog()
    provider = catalog.get("dataset", "digits")(plan["data_params"])
    info = provider.info()
    train = provider.train_set()
    # what kdengine's in-memory dataset returns item by item, for the whole split at once
    images = (train.images.float() / 255 - train.mean) / train.std
    torch.save({"images": images.contiguous(), "labels": train.labels.clone()}, work / "train.pt")

    set_seed(plan["seed"])
    teacher = catalog.get("teacher", "torchvision")(plan["teacher_params"]).build(info)
    # Batch-norm statistics from a few batches, so that the untrained teacher's outputs have
    # realistic magnitudes (the speed does not depend on the weights' values).
    norms = [m for m in teacher.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None  # cumulative average
    teacher.train()
    with torch.no_grad():
        for start in range(0, min(len(images), 4 * plan["batch_size"]), plan["batch_size"]):
            teacher(images[start:start + plan["batch_size"]])
    for m in norms:
        m.momentum = 0.1
    teacher.eval()
    save_weights(teacher, work / "teacher.safetensors")

    # kdengine builds the student right after set_seed(run seed): the same initial weights
    set_seed(plan["seed"])
    student = catalog.get("student", "torchvision")(plan["student_params"]).build(info)
    save_weights(student, work / "student.safetensors")
    return {
        "student_fingerprint": fingerprint(p for p in student.parameters() if p.requires_grad),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "train_images": len(images),
    }


def base_version(version: str) -> str:
    return version.split("+", 1)[0]


def torchdistill_python(cache: Path, spec: str) -> Path:
    """The python of torchdistill's virtual environment, created (or completed) when needed."""
    import torch
    import torchvision

    venv = cache / "torchdistill"
    python = venv / "bin" / "python"

    def versions() -> list[str] | None:
        probe = subprocess.run([str(python), "-c", "import torch, torchdistill; print(torch.__version__, "
                                "torchdistill.__version__)"], capture_output=True, text=True)
        return probe.stdout.split() if probe.returncode == 0 else None

    if python.exists() and (versions() or [None])[0] == torch.__version__:
        return python
    print(f"creating torchdistill's environment in {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    project_site = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # Plain path lines: the project's packages are importable, its own .pth hooks (the editable
    # kdengine install) are not run.
    (Path(site) / "project_torch.pth").write_text("".join(f"{p}\n" for p in project_site))
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={base_version(torch.__version__)}\n"
                           f"torchvision=={base_version(torchvision.__version__)}\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-c", str(constraints), spec], check=True)
    found = versions()
    if found is None or found[0] != torch.__version__:
        raise SystemExit(f"torchdistill's environment does not import the project's torch {torch.__version__} "
                         f"(found: {found})")
    return python


# ---------------------------------------------------------------------------------------------
# orchestration


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "torch": torch.__version__,
            "python": platform.python_version()}


def run_worker(name: str, python: Path, plan_file: Path, result_file: Path, log_file: Path,
               threads: int, script: Path = Path(__file__)) -> dict | None:
    """One contender in a fresh subprocess (``script --worker name``): its result plus its peak
    resident set and wall time (None when it failed; the end of its log is printed)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    command = [str(python), str(Path(script).resolve()), "--worker", name, "--plan", str(plan_file),
               "--result", str(result_file)]
    started = time.perf_counter()
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=plan_file.parent)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        print(f"  {name} failed (exit {process.returncode}); the end of {log_file}:\n{tail}", flush=True)
        return None
    result = json.loads(result_file.read_text())
    result["peak_rss_mib"] = result.get("vm_hwm_mib") or usage.ru_maxrss / 1024  # kilobytes on Linux
    result["wall_seconds"] = time.perf_counter() - started
    return result


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def table(rows: list[tuple[str, str, list[dict]]], expected_fp: str) -> str:
    """One markdown table: a row per (precision, contender); ratios as wall-clock (CPU-time)."""
    lines = ["| precision | contender | images/s | rounds | images/CPU-s | peak RSS MiB | vs torchdistill "
             "| vs minimal | epoch-1 loss | same init |", "|" + " --- |" * 10]
    wall = {(p, n): statistics.median(r["images_per_s"] for r in runs) for p, n, runs in rows if runs}
    cpu = {(p, n): statistics.median(r["images_per_cpu_s"] for r in runs) for p, n, runs in rows if runs}

    def ratio(key, other: str) -> str:
        ref = (key[0], other)
        return f"{wall[key] / wall[ref]:.2f}x ({cpu[key] / cpu[ref]:.2f}x)" if ref in wall else "-"

    for precision, name, runs in rows:
        key = (precision, name)
        if not runs:
            lines.append(f"| {precision} | {name} | failed |" + " - |" * 7)
            continue
        per_run = ", ".join(f"{r['images_per_s']:.1f}" for r in runs)
        rss = statistics.median(r["peak_rss_mib"] for r in runs)
        loss = statistics.median(r["epoch_losses"][0] for r in runs)
        same = "yes" if all(r["init_fingerprint"] == expected_fp for r in runs) else "NO"
        lines.append(f"| {precision} | {name} | {wall[key]:.1f} | {per_run} | {cpu[key]:.2f} | {rss:.0f} | "
                     f"{ratio(key, 'torchdistill')} | {ratio(key, 'minimal')} | {loss:.4f} | {same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every contender")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps-per-epoch", type=int, default=13, help="batches per epoch (times the batch size: at most 1700 images)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every contender")
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    parser.add_argument("--teacher", default="resnet18", help="torchvision ResNet (CIFAR stem)")
    parser.add_argument("--student-width", type=float, default=1.0, help="MobileNetV2 width multiplier")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="data, weights, logs and run folders (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's numbers here")
    add_torchdistill_and_worker_arguments(parser, WORKERS)
    args = parser.parse_args(argv)
    if run_as_worker(args, WORKERS):
        return

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if not set(precisions) <= {"fp32", "bf16"} or not set(contenders) <= set(CONTENDERS):
        parser.error("--precision takes fp32 and/or bf16; --contenders kdengine, torchdistill and/or minimal")
    train_size = args.steps_per_epoch * args.batch_size
    if train_size > 1700:
        parser.error(f"steps-per-epoch x batch-size = {train_size}: digits has at most 1700 training images")
    held_out = min(args.batch_size, (DIGITS_IMAGES - train_size) // 2)  # each of val and test
    if args.epochs * args.steps_per_epoch <= args.warmup + args.epochs:
        parser.error("nothing left to measure: raise --epochs or --steps-per-epoch, or lower --warmup")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="kdengine-vs-torchdistill-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    base = {
        "work": str(work.resolve()), "seed": 0, "threads": args.threads, "batch_size": args.batch_size,
        "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "warmup": args.warmup,
        "data_params": {"image_size": 32, "train_size": train_size, "val_size": held_out,
                        "test_size": held_out},
        "teacher_params": {"model": args.teacher, "cifar_stem": True},
        "student_params": {"model": "mobilenet_v2", "width_mult": args.student_width, "cifar_stem": True},
        "temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
    }
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    info = machine()
    prepared = prepare(base)
    pythons = {"kdengine": Path(sys.executable), "minimal": Path(sys.executable)}
    td_version = "-"
    if "torchdistill" in contenders:
        pythons["torchdistill"] = torchdistill_python(args.cache.resolve(), args.torchdistill)
    load_before = load_average()

    runs: dict[tuple[str, str], list[dict]] = {}
    for precision in precisions:
        plan_file = work / f"plan-{precision}.json"
        plan_file.write_text(json.dumps({**base, "precision": precision}, indent=1))
        for round_ in range(1, args.rounds + 1):
            for name in contenders:
                tag = f"{name}-{precision}-{round_}"
                result = run_worker(name, pythons[name], plan_file, work / f"{tag}.json",
                                    work / "logs" / f"{tag}.log", args.threads)
                runs.setdefault((precision, name), [])
                if result is None:
                    continue
                runs[precision, name].append(result)
                if name == "torchdistill":
                    td_version = result["version"]
                print(f"  {tag}: {result['images_per_s']:.1f} images/s, {result['images_per_cpu_s']:.2f} "
                      f"images/CPU-s over {result['measured_steps']} steps, "
                      f"peak {result['peak_rss_mib']:.0f} MiB, {result['wall_seconds']:.0f} s", flush=True)

    print()
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
          f"torch {info['torch']}, python {info['python']}, {args.threads} threads per contender; "
          f"load average {load_before} before, {load_average()} after")
    print(f"work: {args.teacher} teacher ({prepared['teacher_params'] / 1e6:.1f}M params) -> MobileNetV2 "
          f"{args.student_width}x student ({prepared['student_params'] / 1e6:.2f}M), CIFAR stems, digits 1x32x32, "
          f"batch {args.batch_size}, epochs {args.epochs} x {args.steps_per_epoch} steps, first {args.warmup} steps "
          f"and epoch boundaries untimed; kdengine {kdengine_version()}, torchdistill {td_version}")
    print()
    rows = [(p, n, runs[p, n]) for p in precisions for n in contenders]
    print(table(rows, prepared["student_fingerprint"]))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "plan": base, "prepared": prepared,
                                         "runs": {f"{p}/{n}": r for (p, n), r in runs.items()}}, indent=1))
    failed = sum(len(runs[p, n]) < args.rounds for p in precisions for n in contenders)
    if args.work_dir is None and not failed:
        shutil.rmtree(work, ignore_errors=True)
    elif failed:
        print(f"\nsome runs failed; their logs are in {work / 'logs'}")


if __name__ == "__main__":
    main()
