"""Activation checkpointing (``train.activation_checkpointing``): by module path or through a
model's own ``set_grad_checkpointing()``; the gradients and BatchNorm statistics stay the same."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import kdengine
from kdengine import KDEngineError, load_recipe
from kdengine.recipe import TrainSpec
from kdengine.train.checkpointing import apply_activation_checkpointing

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(**train) -> TrainSpec:
    return TrainSpec(epochs=1, batch_size=4, activation_checkpointing=True, **train)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def train_once(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(1)  # the same dropout masks in both models
    model(inputs).square().mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_checkpointed_modules_give_the_same_gradients_and_batchnorm_statistics():
    plain, checkpointed = small_cnn(), small_cnn()
    apply_activation_checkpointing(checkpointed, spec(checkpoint_modules=["3"]), "r.toml", "cnn")
    calls = []
    checkpointed[3][0].register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    inputs = torch.randn(4, 3, 8, 8)
    expected, got = train_once(plain, inputs), train_once(checkpointed, inputs)
    assert len(calls) == 2  # the forward, and the recomputation in the backward pass
    assert expected.keys() == got.keys()
    assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected)
    for name, buffer in plain.state_dict().items():  # running statistics moved once, not twice
        assert torch.allclose(buffer, checkpointed.state_dict()[name]), name
    calls.clear()
    with torch.no_grad():
        checkpointed.eval()(inputs)
    assert len(calls) == 1  # evaluation runs the module plainly


def test_timm_models_use_their_own_switch():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    plain = timm.create_model("resnet10t", num_classes=5)
    checkpointed = copy.deepcopy(plain)
    switched = []
    original = checkpointed.set_grad_checkpointing
    checkpointed.set_grad_checkpointing = lambda enable=True: (switched.append(enable), original(enable))
    apply_activation_checkpointing(checkpointed, spec(), "r.toml", "timm(model=resnet10t)")
    assert switched == [True] and checkpointed.grad_checkpointing
    inputs = torch.randn(2, 3, 16, 16)
    expected, got = train_once(plain, inputs), train_once(checkpointed, inputs)
    assert all(torch.allclose(expected[k], got[k], rtol=1e-4, atol=1e-6) for k in expected)


def test_a_model_with_neither_way_is_a_recipe_error():
    with pytest.raises(KDEngineError, match=r"r\.toml: train\.activation_checkpointing: cnn has no "
                                            r"set_grad_checkpointing\(\); name the modules .* e\.g\. \['3\.0'"):
        apply_activation_checkpointing(small_cnn(), spec(), "r.toml", "cnn")
    with pytest.raises(KDEngineError, match=r"r\.toml: train\.checkpoint_modules: cnn has no module '3\.9'"):
        apply_activation_checkpointing(small_cnn(), spec(checkpoint_modules=["3.9"]), "r.toml", "cnn")


def test_stage_overrides_carry_it(tiny_recipe):
    tiny_recipe["teacher"]["train"] = {"activation_checkpointing": True, "checkpoint_modules": ["features.3"]}
    recipe = load_recipe(tiny_recipe)
    assert recipe.teacher_train().activation_checkpointing and recipe.teacher_train().checkpoint_modules == [
        "features.3"]
    assert not recipe.train.activation_checkpointing


def test_a_run_stops_before_training_when_the_model_cannot_checkpoint(tiny_recipe, tmp_path):
    tiny_recipe["train"]["activation_checkpointing"] = True  # torchvision models have no switch of their own
    with pytest.raises(KDEngineError, match=r"train\.activation_checkpointing: torchvision\(model=mobilenet_v2"):
        kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # before the run folder exists


def test_a_run_with_checkpointed_modules_trains_the_same_weights(tiny_recipe, tmp_path):
    tiny_recipe["data"]["params"].update(val_size=64, test_size=64)
    tiny_recipe["train"]["baseline"] = False
    plain = kdengine.run(tiny_recipe, output_dir=tmp_path / "plain", progress=False)
    tiny_recipe["train"].update(activation_checkpointing=True, checkpoint_modules=["features.2", "features.5"])
    checkpointed = kdengine.run(tiny_recipe, output_dir=tmp_path / "checkpointed", progress=False)
    for stage in ("teacher", "distilled"):
        a, b = (load_file(str(tmp_path / name / Path(r.run_dir).name / "checkpoints" / stage / "last.safetensors"))
                for name, r in (("plain", plain), ("checkpointed", checkpointed)))
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a), stage
