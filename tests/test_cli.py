"""The command line: bad input gives one clear message, exit code 2, no traceback, and leaves
existing run folders untouched."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from kdengine.cli import main

GOOD = """
[run]
name = "cli"

[data]
name = "digits"
params = { image_size = 8, train_size = 100 }

[teacher]
name = "torchvision"
params = { model = "mobilenet_v2", width_mult = 0.25, cifar_stem = true }

[student]
name = "torchvision"
params = { model = "mobilenet_v2", width_mult = 0.25, cifar_stem = true }

[train]
epochs = 1
batch_size = 16
max_steps_per_epoch = 1

[[loss]]
name = "kl_div"
weight = 0.9
params = { temperature = 4.0 }

[[loss]]
name = "cross_entropy"
weight = 0.1

[[metric]]
name = "top1"
"""


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def existing_run(tmp_path) -> Path:
    run = tmp_path / "runs" / "cli-20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text('{"kept": true}')
    return run


def bad_cases(tmp_path: Path) -> list[tuple[str, str, list[str]]]:
    """(recipe text, expected fragments in the message, extra args)."""
    from torch import nn

    from kdengine.io.weights import save_weights

    wrong_arch = tmp_path / "resnet.safetensors"
    save_weights(nn.Linear(3, 3), wrong_arch)
    import os

    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"weight": torch.zeros(1), "boom": Payload()}, tmp_path / "evil.pth")
    for split in ("train", "val", "test"):
        (tmp_path / "empty" / split / "cat").mkdir(parents=True, exist_ok=True)
    return [
        (GOOD.replace('[run]\nname = "cli"', '[run\nname = "cli"'), ["invalid TOML", "line"], []),
        (GOOD.replace("epochs = 1", 'epochs = "one"'), ["train.epochs: input should be a valid integer"], []),
        (GOOD.replace("batch_size = 16", "batch_size = 16\nbatchsize = 3"), ["train.batchsize: extra inputs are not permitted"], []),
        (GOOD.replace('name = "kl_div"', 'name = "kl_dvi"'), ["loss[0].name: unknown loss term 'kl_dvi'", "Did you mean 'kl_div'?"], []),
        (GOOD.replace("temperature = 4.0", "temprature = 4.0"), ["loss[0].params.temprature: extra inputs are not permitted"], []),
        (GOOD.replace("temperature = 4.0", "temperature = -4.0"), ["loss[0].params.temperature: input should be greater than 0"], []),
        (GOOD.replace('name = "digits"\nparams = { image_size = 8, train_size = 100 }',
                      f'name = "cifar100"\nparams = {{ root = "{(tmp_path / "nodata").as_posix()}" }}'),
         ["data.params.root: CIFAR-100 not found"], []),
        (GOOD.replace('[student]', f'checkpoint = "{wrong_arch.as_posix()}"\n\n[student]'),
         ["teacher.checkpoint", "does not match the architecture"], []),
        (GOOD.replace('[student]', f'checkpoint = "{(tmp_path / "missing.safetensors").as_posix()}"\n\n[student]'),
         ["teacher.checkpoint: file not found"], []),
        (GOOD, ["--set 'train.epochs': expected KEY=VALUE"], ["--set", "train.epochs"]),
        ("", ["run: missing required value", "teacher: missing required value"], []),
        ("\x00\x01binary", ["invalid TOML"], []),
        (GOOD.replace("[run]", "color = 'blue'\n[run]"), ["color: extra inputs are not permitted"], []),
        (GOOD.replace('name = "cli"', 'name = "cli"\nname = "twice"'), ["invalid TOML"], []),
        (GOOD.replace("batch_size = 16", "batch_size = 0"), ["train.batch_size: input should be greater than or equal to 1"], []),
        (GOOD.replace("max_steps_per_epoch = 1", "max_steps_per_epoch = 1\noptimizer = { name = 'rmsprop', lr = 0.1 }"),
         ["train.optimizer.name: input should be 'sgd', 'adam' or 'adamw'"], []),
        (GOOD.replace("max_steps_per_epoch = 1", "max_steps_per_epoch = 1\noptimizer = { name = 'sgd', lr = -0.1 }"),
         ["train.optimizer.lr: input should be greater than 0"], []),
        (GOOD.replace("max_steps_per_epoch = 1", "max_steps_per_epoch = 1\nmixed_precision = 'fp8'"),
         ["train.mixed_precision: input should be 'no', 'bf16' or 'fp16'"], []),
        (GOOD.replace("max_steps_per_epoch = 1", "max_steps_per_epoch = 1\nmonitor = 'accuracy'"),
         ["train.monitor: 'accuracy' is not a metric of this recipe"], []),
        (GOOD.replace("max_steps_per_epoch = 1", "max_steps_per_epoch = 1\nreport_epochs = [3]"),
         ["train.report_epochs: [3] outside 1..epochs (1)"], []),
        (GOOD.replace('name = "cli"', 'name = "cli"\nseed = -1'), ["run.seed: input should be greater than or equal to 0"], []),
        (GOOD.replace('name = "cli"', 'name = "cli/../../etc"'), ["run.name: string should match pattern"], []),
        (GOOD.replace('name = "top1"', 'name = "top1"\nparams = { k = 3 }'), ["metric[0].params.k: extra inputs are not permitted"], []),
        (GOOD.replace('name = "digits"', 'name = "digitz"'), ["data.name: unknown dataset 'digitz'. Did you mean 'digits'?"], []),
        (GOOD.replace('[student]\nname = "torchvision"', '[student]\nname = "torchvison"'),
         ["student.name: unknown student 'torchvison'. Did you mean 'torchvision'?"], []),
        (GOOD.replace('model = "mobilenet_v2", width_mult = 0.25, cifar_stem = true }\n\n[train]',
                      'model = "mobilenet_v9", cifar_stem = true }\n\n[train]'), ["student: torchvision has no model 'mobilenet_v9'"], []),
        (GOOD.replace("image_size = 8", "image_size = 2"), ["data.params.image_size: input should be greater than or equal to 8"], []),
        (GOOD.replace('name = "digits"\nparams = { image_size = 8, train_size = 100 }',
                      f'name = "image_folder"\nparams = {{ root = "{(tmp_path / "empty").as_posix()}", image_size = 16 }}'),
         ["data: ", "is empty"], []),
        (GOOD.replace('[student]', f'checkpoint = "{(tmp_path / "evil.pth").as_posix()}"\n\n[student]'),
         ["teacher.checkpoint", "refused to load"], []),
        (GOOD.replace('[student]', '[[generation]]\nname = "g2"\nteacher = "g9"\nstudent = { name = "torchvision", params = { model = "mobilenet_v2" } }\n\n[student]'),
         ["either [student] or [[generation]]"], []),
        (GOOD.replace('[[loss]]\nname = "cross_entropy"\nweight = 0.1\n', ''),
         ["every loss term needs the teacher"], []),
        (GOOD, ["train.epochs: input should be greater than or equal to 1"], ["--set", "train.epochs=0"]),
        (GOOD.replace("train_size = 100 }", 'train_size = 100 }\non_bad_sample = "ignore"'),
         ["data.on_bad_sample: input should be 'error' or 'skip'"], []),
        (GOOD, ["data.on_bad_sample: input should be 'error' or 'skip'"], ["--set", "data.on_bad_sample=drop"]),
    ]


@pytest.mark.parametrize("command", ["run", "validate"])
def test_bad_input_corpus(tmp_path, existing_run, capsys, command):
    before = tree_digest(existing_run.parent)
    for i, (text, fragments, extra) in enumerate(bad_cases(tmp_path)):
        recipe = tmp_path / f"bad{i}.toml"
        recipe.write_text(text)
        args = [command, str(recipe), *extra]
        if command == "run":
            args += ["--output-dir", str(existing_run.parent), "--no-progress"]
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2, (i, err)
        assert str(recipe) in err or "--set" in err, (i, err)
        for fragment in fragments:
            assert fragment in err, (i, fragment, err)
        assert "Traceback" not in err
    assert tree_digest(existing_run.parent) == before


def test_unwritable_output_folder_is_refused_before_training(tmp_path, capsys):
    recipe = tmp_path / "good.toml"
    recipe.write_text(GOOD)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["run", str(recipe), "--output-dir", str(blocker / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{recipe}: run.output_dir: cannot create" in err and "Traceback" not in err


def test_corpus_is_large_enough(tmp_path):
    assert len(bad_cases(tmp_path)) >= 25


def test_subprocess_exit_code_and_debug_traceback(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(GOOD.replace("epochs = 1", "epochs = -1"))
    proc = subprocess.run([sys.executable, "-m", "kdengine", "validate", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: {recipe}: train.epochs:")
    assert "Traceback" not in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "kdengine", "--debug", "validate", str(recipe)], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_validate_reports_costs(tmp_path, capsys):
    recipe = tmp_path / "good.toml"
    recipe.write_text(GOOD)
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "params" in out and "GFLOPs" in out and "loss kl_div" in out and "MiB" in out


def test_run_prints_the_table(tmp_path, capsys):
    recipe = tmp_path / "good.toml"
    recipe.write_text(GOOD)
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--no-progress",
                 "--set", "train.baseline=false"]) == 0
    out = capsys.readouterr().out
    assert "student (distilled)" in out and "Run folder:" in out


def test_version(capsys):
    import kdengine

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"kdengine {kdengine.__version__}"
    assert kdengine.__version__ != "0+unknown"  # the installed distribution's version


@pytest.mark.parametrize("flag", ["--latency-runs", "--throughput-batch", "--calibration-images"])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_export_counts_below_one_are_refused_before_anything_is_written(existing_run, capsys, flag, value):
    before = tree_digest(existing_run)
    with pytest.raises(SystemExit) as exited:
        main(["export", str(existing_run), "--format", "onnx", flag, value])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"argument {flag}: expected a whole number of at least 1; got '{value}'" in err
    assert "Traceback" not in err and tree_digest(existing_run) == before


def test_a_batch_that_does_not_split_over_the_processes_stops_before_any_process_starts(tmp_path, capsys,
                                                                                        monkeypatch):
    recipe = tmp_path / "odd.toml"
    recipe.write_text(GOOD.replace("batch_size = 16", "batch_size = 15"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("no process should start"))
    code = main(["run", str(recipe), "--num-processes", "2", "--output-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and f"{recipe}: train.batch_size: 15 does not split evenly over 2 processes" in err
    assert not (tmp_path / "runs").exists() and "Traceback" not in err


def test_a_teacher_batch_of_its_own_is_named_by_its_field(tiny_recipe):
    from kdengine.errors import KDEngineError
    from kdengine.recipe import load_recipe
    from kdengine.recipe.stages import plan_stages
    from kdengine.train.run import check_batch_split

    tiny_recipe["teacher"]["train"] = {"epochs": 1, "batch_size": 30, "eval_batch_size": 64}
    recipe = load_recipe(tiny_recipe)
    plans = plan_stages(recipe)
    check_batch_split(recipe, plans, plans, 2)
    with pytest.raises(KDEngineError, match=r"teacher.train.batch_size: 30 does not split evenly over 4"):
        check_batch_split(recipe, plans, plans, 4)


def test_several_processes_relaunch_the_arguments_main_was_given(tmp_path, monkeypatch):
    recipe = tmp_path / "good.toml"
    recipe.write_text(GOOD)
    launched = []

    class Done:
        returncode = 0

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["pytest", "-q", "tests"])
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: launched.append(command) or Done())
    assert main(["run", str(recipe), "--num-processes", "2", "--no-progress"]) == 0
    command = launched[0]
    assert command[command.index("kdengine"):] == ["kdengine", "run", str(recipe), "--no-progress"]
    assert "--nproc_per_node=2" in command and "tests" not in command
