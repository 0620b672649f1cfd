"""Pretrained weights in the model factories: local files through timm, the Hugging Face cache,
torchvision weight enums, the head rule, and fast, clear failures offline. Nothing is downloaded:
every weight file is made here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kdengine import CheckpointError, DataInfo, KDEngineError
from kdengine import WeightsUnavailableError
from kdengine.io.hub import torch_hub_cached_file
from kdengine_classification.models import TimmModel, TorchvisionModel
from kdengine_edges.models import EncoderWeightsError, UNet

IMAGENET = DataInfo(task="classification", in_channels=3, num_classes=1000)
TEN = DataInfo(task="classification", in_channels=3, num_classes=10)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hugging Face cache and an empty TORCH_HOME."""
    import huggingface_hub.constants as constants

    hub = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))  # read once, at import
    return hub


def _timm_weights(tmp_path: Path, num_classes: int = 1000, name: str = "w.safetensors") -> tuple[Path, nn.Module]:
    import timm

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=num_classes).eval()
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    return path, source


# ------------------------------------------------------------------------------------------ timm


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_timm_pretrained_file_gives_bitwise_the_same_outputs(tmp_path, offline, name):
    path, source = _timm_weights(tmp_path, name=name)
    model = TimmModel({"model": "test_resnet", "pretrained_file": str(path)}).build(IMAGENET).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_timm_head_is_kept_when_the_class_count_matches_and_replaced_otherwise(tmp_path, offline):
    path, source = _timm_weights(tmp_path, num_classes=10)  # a 10-class fine-tune, not ImageNet's 1000
    kept = TimmModel({"model": "test_resnet", "pretrained_file": str(path)}).build(TEN)
    assert torch.equal(kept.fc.weight, source.fc.weight)

    replaced = TimmModel({"model": "test_resnet", "pretrained_file": str(path)}).build(
        DataInfo("classification", 3, 7))
    assert replaced.fc.weight.shape == (7, source.fc.in_features)
    assert not torch.equal(replaced.fc.weight[:7], source.fc.weight[:7])
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(replaced.state_dict()[k], v) for k, v in body.items())


def test_timm_cifar_stem_keeps_the_pretrained_body(tmp_path, offline):
    path, source = _timm_weights(tmp_path)
    model = TimmModel({"model": "test_resnet", "pretrained_file": str(path), "cifar_stem": True}).build(IMAGENET)
    # test_resnet has a 3x3 deep stem: its first convolution keeps its weights at stride 1
    assert model.conv1[0].stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in source.state_dict().items())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_timm_cifar_stem_replaces_a_large_stem_convolution_only(tmp_path, offline):
    import timm

    source = timm.create_model("resnet18", num_classes=10).eval()
    path = tmp_path / "r18.safetensors"
    save_file(source.state_dict(), str(path))
    model = TimmModel({"model": "resnet18", "pretrained_file": str(path), "cifar_stem": True}).build(TEN)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in source.state_dict().items() if not k.startswith("conv1."))


def test_timm_pretrained_file_that_does_not_fit_names_the_file(tmp_path, offline):
    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(1000, 3), "fc.bias": torch.zeros(1000)}, str(path))
    with pytest.raises(CheckpointError, match="pretrained_file does not fit timm 'test_resnet'") as info:
        TimmModel({"model": "test_resnet", "pretrained_file": str(path)}).build(IMAGENET)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="pretrained_file not found"):
        TimmModel({"model": "test_resnet", "pretrained_file": str(tmp_path / "none.pth")}).build(IMAGENET)


def test_timm_load_does_not_fetch_pretrained_weights(tmp_path, offline):
    """With teacher.checkpoint the trained weights replace the pretrained ones: no download."""
    import timm
    from kdengine.io.weights import save_weights

    trained = timm.create_model("test_resnet", num_classes=10)
    save_weights(trained, tmp_path / "best.safetensors")
    model = TimmModel({"model": "test_resnet", "pretrained": True}).load(tmp_path / "best.safetensors", TEN)
    assert torch.equal(model.fc.weight, trained.fc.weight)


def _fill_hub_cache(hub: Path, repo: str, model: nn.Module) -> None:
    """The Hugging Face cache layout that hf_hub_download reads offline, written with timm's own
    save_for_hf (config.json + model.safetensors)."""
    from timm.models import save_for_hf

    commit = "0" * 40
    folder = hub / ("models--" + repo.replace("/", "--"))
    save_for_hf(model, str(folder / "snapshots" / commit), safe_serialization=True)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)


def test_hf_hub_model_loads_from_the_hugging_face_cache_offline(offline):
    import timm

    torch.manual_seed(2)
    source = timm.create_model("test_resnet", num_classes=10).eval()
    _fill_hub_cache(offline, "someone/test_resnet.cifar10", source)
    name = "hf-hub:someone/test_resnet.cifar10"
    model = TimmModel({"model": name, "pretrained": True}).build(TEN).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    # the Hub config says 10 classes: a 7-class dataset gets a new head on the pretrained body
    seven = TimmModel({"model": name, "pretrained": True}).build(DataInfo("classification", 3, 7))
    assert seven.fc.weight.shape[0] == 7 and torch.equal(seven.conv1[0].weight, source.conv1[0].weight)


def test_hf_hub_model_offline_without_cache_fails_fast_and_clearly(offline):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        TimmModel({"model": "hf-hub:timm/test_resnet.r160_in1k", "pretrained": True}).build(TEN)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    for part in ("hf-hub:timm/test_resnet.r160_in1k", str(offline), "HF_HOME", "pretrained_file",
                 "teacher.checkpoint", "HF_HUB_OFFLINE=1"):
        assert part in message


def test_timm_registry_model_offline_without_cache_names_the_hub_repo(offline):
    with pytest.raises(WeightsUnavailableError) as info:
        TimmModel({"model": "test_resnet", "pretrained": True}).build(TEN)
    message = str(info.value)
    assert "timm/test_resnet.r160_in1k" in message and str(offline) in message
    assert "could not load pretrained weights" in message  # the phrase earlier releases used


def test_timm_names_are_checked(offline):
    for pretrained in (True, False):
        with pytest.raises(KDEngineError, match=r"Invalid pretrained tag \(bogus\).*tagged weights: resnet50.a1_in1k"):
            TimmModel({"model": "resnet50.bogus", "pretrained": pretrained}).build(TEN)
    import timm

    published = {name.split(".")[0] for name in timm.list_pretrained()}
    unpublished = next(name for name in timm.list_models() if name not in published)
    with pytest.raises(KDEngineError, match=f"timm '{unpublished}' has no pretrained weights"):
        TimmModel({"model": unpublished, "pretrained": True}).build(TEN)
    with pytest.raises(KDEngineError, match="hf-hub:someone/model"):  # timm's own hint for a repo id
        TimmModel({"model": "someone/model"}).build(TEN)
    with pytest.raises(KDEngineError, match="a hf-hub model brings its own weights"):
        TimmModel({"model": "hf-hub:a/b", "pretrained_file": "w.pth"}).build(TEN)


# ----------------------------------------------------------------------------------- torchvision


def _cache_torchvision_weights(model: str, weights_name: str = "DEFAULT") -> dict[str, torch.Tensor]:
    """Put a locally made state dict where torch.hub would have cached the real download."""
    import torchvision

    weights = torchvision.models.get_model_weights(model).verify(weights_name)
    torch.manual_seed(3)
    state = torchvision.models.get_model(model, num_classes=len(weights.meta["categories"])).state_dict()
    path = torch_hub_cached_file(weights.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_torchvision_weights_keep_the_head_when_the_class_count_matches(offline):
    state = _cache_torchvision_weights("mobilenet_v3_small")
    model = TorchvisionModel({"model": "mobilenet_v3_small", "weights": "IMAGENET1K_V1"}).build(IMAGENET)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("name,head", [("mobilenet_v3_small", "classifier.3"), ("squeezenet1_1", "classifier.1")])
def test_torchvision_weights_replace_the_head_otherwise(offline, name, head):
    state = _cache_torchvision_weights(name)
    model = TorchvisionModel({"model": name, "weights": "DEFAULT"}).build(TEN)
    ours = model.state_dict()
    assert ours[f"{head}.weight"].shape[0] == 10
    body = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    assert body and all(torch.equal(ours[k], v) for k, v in body.items())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_torchvision_weights_with_cifar_stem(offline):
    state = _cache_torchvision_weights("mobilenet_v2")
    model = TorchvisionModel({"model": "mobilenet_v2", "weights": "DEFAULT", "cifar_stem": True}).build(TEN)
    assert model.features[0][0].stride == (1, 1)
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"])
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_torchvision_default_offline_with_empty_torch_home_fails_clearly(offline):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        TorchvisionModel({"model": "resnet18", "weights": "DEFAULT"}).build(TEN)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    for part in ("torchvision 'resnet18'", "ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth",
                 str(offline.parents[1] / "torch-home"), "TORCH_HOME", "teacher.checkpoint"):
        assert part in message


def test_torchvision_weight_names_are_checked(offline):
    choices = "choose one of: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"
    with pytest.raises(KDEngineError, match=f"no weights 'IMAGENET1K_V9'; {choices}"):
        TorchvisionModel({"model": "resnet50", "weights": "IMAGENET1K_V9"}).build(TEN)
    _cache_torchvision_weights("mobilenet_v2")
    with pytest.raises(KDEngineError, match="could not be loaded with params .*width_mult"):
        TorchvisionModel({"model": "mobilenet_v2", "weights": "DEFAULT", "width_mult": 0.5}).build(TEN)


def test_torchvision_load_does_not_fetch_weights(tmp_path, offline):
    import torchvision
    from kdengine.io.weights import save_weights

    trained = torchvision.models.get_model("mobilenet_v3_small", num_classes=10)
    save_weights(trained, tmp_path / "best.safetensors")
    model = TorchvisionModel({"model": "mobilenet_v3_small", "weights": "DEFAULT"}).load(
        tmp_path / "best.safetensors", TEN)
    assert torch.equal(model.classifier[3].weight, trained.classifier[3].weight)


# --------------------------------------------------------------------------------------- smp U-Net


def test_smp_imagenet_encoder_offline_fails_fast_and_names_the_cache(offline):
    start = time.perf_counter()
    with pytest.raises(EncoderWeightsError) as info:
        UNet({"encoder": "resnet34", "encoder_weights": "imagenet"}).build(DataInfo("edges", 3, 1))
    assert time.perf_counter() - start < 5
    message = str(info.value)
    for part in ("encoder 'resnet34'", "smp-hub/resnet34.imagenet", str(offline), "HF_HOME",
                 "HF_HUB_OFFLINE=1", "teacher.checkpoint"):
        assert part in message


def test_smp_load_does_not_fetch_encoder_weights(tmp_path, offline):
    from kdengine.io.weights import save_weights

    params = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [8, 8, 8]}
    info = DataInfo("edges", 3, 1)
    trained = UNet(params).build(info)
    save_weights(trained, tmp_path / "best.safetensors")
    model = UNet({**params, "encoder_weights": "imagenet"}).load(tmp_path / "best.safetensors", info)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
