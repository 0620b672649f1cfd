"""``train.compile`` (kdengine.runtime.compiling): the student compiled in place (checkpoints keep
plain keys), the teacher through a compiled call, and a compiler that fails is a located error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import kdengine
from kdengine import KDEngineError
from kdengine.cli import main
from kdengine.runtime.compiling import compile_in_place, compiled_call

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fake_compile(monkeypatch) -> list:
    """torch.compile that compiles nothing (a real compile takes minutes on a small CPU): every
    call is recorded and the function or module is returned as it is."""
    compiled = []

    def fake(target, *args, **kwargs):
        compiled.append(target)
        return target

    monkeypatch.setattr(torch, "compile", fake)
    return compiled


def failing_compile(monkeypatch) -> None:
    """torch.compile as it behaves without a C++ compiler: fine to call, failing at the first call
    of what it returns."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InvalidCxxCompiler

    def compile_(target, *args, **kwargs):
        def first_call(*a, **k):
            raise BackendCompilerFailed(compile_, InvalidCxxCompiler(), None)
        return first_call

    monkeypatch.setattr(torch, "compile", compile_)


def test_compiling_in_place_keeps_the_module_and_its_state_dict_keys():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    keys = list(model.state_dict())
    assert compile_in_place(model, "r.toml", "the student") is model  # torch.compile is lazy: nothing compiles yet
    assert list(model.state_dict()) == keys and not any("_orig_mod" in k for k in keys)


def test_a_run_compiles_student_and_teacher_and_saves_plain_weights(tiny_recipe, tmp_path, fake_compile):
    tiny_recipe["train"].update(compile=True, baseline=False)
    tiny_recipe["teacher"]["train"] = {"compile": False}  # a stage may leave it off
    results = kdengine.run(tiny_recipe, progress=False, output_dir=tmp_path)
    kinds = [type(getattr(t, "__self__", t)).__name__ for t in fake_compile]
    assert kinds == ["MobileNetV2", "MobileNetV2"]  # the frozen teacher (a module), the student's forward
    assert isinstance(fake_compile[0], nn.Module) and not isinstance(fake_compile[1], nn.Module)
    weights = load_file(Path(results.run_dir) / "checkpoints" / "distilled" / "best.safetensors")
    plain = kdengine.load_recipe(tiny_recipe)  # the same architecture, never compiled
    assert not any("_orig_mod" in k for k in weights) and "features.0.0.weight" in weights
    assert plain.train.compile and not plain.teacher_train().compile


def test_a_compiler_that_fails_at_the_first_call_is_an_error_naming_train_compile(tiny_recipe, tmp_path,
                                                                                  monkeypatch):
    failing_compile(monkeypatch)
    tiny_recipe["train"].update(compile=True, baseline=False)
    with pytest.raises(KDEngineError, match=r"^<dict>: train\.compile: torch\.compile could not compile teacher's "
                                            r"torchvision\(.*\) \(InvalidCxxCompiler: No working C\+\+ compiler found"
                                            r".*set train\.compile = false$"):
        kdengine.run(tiny_recipe, progress=False, output_dir=tmp_path)
    tiny_recipe["teacher"]["train"] = {"compile": False}  # the frozen teacher of the distilled stage
    with pytest.raises(KDEngineError, match=r"^<dict>: train\.compile: torch\.compile could not compile the teacher"):
        kdengine.run(tiny_recipe, progress=False, output_dir=tmp_path)


def test_the_command_line_says_so_without_a_traceback(tmp_path, monkeypatch, capsys):
    failing_compile(monkeypatch)
    model = compiled_call(nn.Linear(2, 2), "r.toml", "the teacher")
    with pytest.raises(KDEngineError, match="InvalidCxxCompiler"):
        model(torch.zeros(1, 2))
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    code = main(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{recipe}: train.compile: torch.compile could not compile" in err
    assert "Traceback" not in err


def test_torch_compile_raising_itself_is_the_same_error(monkeypatch):
    def unsupported(target, *args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unsupported)
    with pytest.raises(KDEngineError, match=r"^r\.toml: train\.compile: .*RuntimeError: torch\.compile is not"):
        compile_in_place(nn.Linear(2, 2), "r.toml", "the student")


def test_an_error_of_the_model_itself_is_not_blamed_on_the_compiler(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda target, *a, **k: target)
    model = compile_in_place(nn.Linear(2, 2), "r.toml", "the student")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        model(torch.zeros(1, 3))


RECIPE = """
[run]
name = "compiled"
[data]
name = "digits"
params = { image_size = 8, train_size = 64, val_size = 32, test_size = 32 }
[teacher]
name = "torchvision"
params = { model = "mobilenet_v2", width_mult = 0.25, cifar_stem = true }
train = { epochs = 1 }
[student]
name = "torchvision"
params = { model = "mobilenet_v2", width_mult = 0.25, cifar_stem = true }
[train]
epochs = 1
batch_size = 32
baseline = false
compile = true
[[loss]]
name = "kl_div"
[[loss]]
name = "cross_entropy"
[[metric]]
name = "top1"
"""
