"""Super-resolution models: shapes, tappable paths, spandrel loading and its errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from kdengine import CheckpointError, DataInfo
from kdengine.io.weights import save_weights
from kdengine_superres.models import AttentionSRNet, SpandrelModel, SwinIR

INFO = DataInfo(task="superres", in_channels=3, scale=4)
TINY_SWIN = {"size": "tiny", "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4}

warnings.filterwarnings("ignore", message="torch.meshgrid")


def test_attention_srnet_upscales_x4_and_exposes_block_outputs():
    model = AttentionSRNet({"blocks": 3, "channels": 8}).build(INFO)
    x = torch.rand(2, 3, 10, 12)
    assert model(x).shape == (2, 3, 40, 48)
    names = dict(model.named_modules())
    assert {"head", "body.0", "body.2", "body_tail", "upsample"} <= set(names)
    assert "body.3" not in names


def test_attention_srnet_width_and_depth_change_size():
    small = AttentionSRNet({"blocks": 2, "channels": 8}).build(INFO)
    large = AttentionSRNet({"blocks": 4, "channels": 16}).build(INFO)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(large) > count(small)


def test_attention_srnet_x3_uses_one_shuffle_stage():
    model = AttentionSRNet({"blocks": 1, "channels": 8}).build(DataInfo(task="superres", scale=3))
    assert model(torch.rand(1, 3, 7, 5)).shape == (1, 3, 21, 15)


@pytest.mark.parametrize("size", ["tiny", "small", "lightweight", "classical"])
def test_swinir_presets_build(size):
    model = SwinIR({"size": size}).build(INFO)
    if size == "small":
        assert 0.2e6 < sum(p.numel() for p in model.parameters()) < 0.3e6
    if size in ("tiny", "small"):
        assert model(torch.rand(1, 3, 12, 20)).shape == (1, 3, 48, 80)
    assert "layers.0" in dict(model.named_modules())


def test_swinir_layers_emit_tokens_on_the_padded_grid():
    model = SwinIR(TINY_SWIN).build(INFO).eval()
    seen = {}
    model.layers[0].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        model(torch.rand(1, 3, 10, 6))  # padded to 12 x 8 by the window size 4
    assert seen["out"].shape == (1, 12 * 8, 12)


def test_spandrel_detects_a_tiny_swinir_state_dict(tmp_path):
    model = SwinIR(TINY_SWIN).build(INFO).eval()
    path = tmp_path / "tiny_swinir.pth"
    torch.save({"params": model.state_dict()}, path)  # the official release layout
    loaded = SwinIR({"size": "tiny"}).load(path, INFO).eval()
    assert type(loaded).__name__ == "SwinIR"
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_kdengine_safetensors_checkpoint_loads_through_spandrel(tmp_path):
    model = SwinIR(TINY_SWIN).build(INFO).eval()
    path = tmp_path / "best.safetensors"
    save_weights(model, path)
    loaded = SwinIR({"size": "tiny"}).load(path, INFO).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_unidentifiable_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "mystery.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3), "bar.bias": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="mystery.safetensors.*cannot identify"):
        SwinIR({}).load(path, INFO)


def test_wrong_architecture_or_scale_is_refused(tmp_path):
    model = SwinIR(TINY_SWIN).build(DataInfo(task="superres", scale=2))
    path = tmp_path / "x2.safetensors"
    save_weights(model, path)
    with pytest.raises(CheckpointError, match="x2 model but the dataset is x4"):
        SwinIR({}).load(path, INFO)
    with pytest.raises(CheckpointError, match="not RCAN"):
        SpandrelModel({"arch": "RCAN"}).load(path, DataInfo(task="superres", scale=2))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params": {"x": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        SwinIR({}).load(path, INFO)


def test_generic_spandrel_model_needs_a_checkpoint():
    with pytest.raises(CheckpointError, match="checkpoint"):
        SpandrelModel({}).build(INFO)


def test_swinir_params_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="same length"):
        SwinIR({"depths": [2, 2], "num_heads": [2]})
    with pytest.raises(ValidationError, match="divisible"):
        SwinIR({"embed_dim": 10, "num_heads": [3, 3]})


def test_swinir_image_skip_starts_as_bicubic_and_round_trips(tmp_path):
    params = {**TINY_SWIN, "image_skip": True}
    model = SwinIR(params).build(INFO).eval()
    for p in model.parameters():
        torch.nn.init.zeros_(p)  # the network's residual is then zero
    x = torch.rand(1, 3, 8, 12)
    bicubic = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), bicubic)
    model = SwinIR(params).build(INFO).eval()
    path = tmp_path / "best.safetensors"
    save_weights(model, path)
    loaded = SwinIR(params).load(path, INFO).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # The flag travels with the weights: the other setting is refused, naming the file.
    with pytest.raises(CheckpointError, match="best.safetensors.*image_skip = true"):
        SwinIR(TINY_SWIN).load(path, INFO)
    plain = tmp_path / "plain.safetensors"
    save_weights(SwinIR(TINY_SWIN).build(INFO), plain)
    with pytest.raises(CheckpointError, match="plain.safetensors.*image_skip = false"):
        SwinIR(params).load(plain, INFO)
