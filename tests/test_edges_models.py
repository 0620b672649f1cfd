import pytest
from pydantic import ValidationError
import torch

from kdengine import DataInfo, KDEngineError
from kdengine_edges.models import EncoderWeightsError, UNet

INFO = DataInfo(task="edges", in_channels=3, num_classes=1)
SMALL = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]}


def test_random_init_builds_and_keeps_any_input_size():
    model = UNet(SMALL).build(INFO).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 21, 37))
    assert out.shape == (2, 1, 21, 37)


def test_student_role_with_mobilenet_encoder():
    model = UNet({"encoder": "mobilenet_v2", "decoder_channels": [32, 16, 16, 8, 8]}).build(INFO)
    out = model(torch.rand(2, 3, 64, 64))
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_state_dict_is_plain_smp():
    import segmentation_models_pytorch as smp

    ours = UNet(SMALL).build(INFO)
    theirs = smp.Unet("resnet18", encoder_depth=3, decoder_channels=(16, 8, 4),
                      encoder_weights=None, classes=1)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_imagenet_weights_offline_fail_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as a process that imported the Hub online
    with pytest.raises(EncoderWeightsError, match="could not fetch the 'imagenet' weights") as err:
        UNet({"encoder": "resnet18", "encoder_weights": "imagenet"}).build(INFO)
    assert isinstance(err.value, KDEngineError)
    assert "HF_HOME" in str(err.value)
    # The Hub's offline switch, turned on for the download attempt, is restored afterwards.
    assert constants.HF_HUB_OFFLINE is False


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(KDEngineError, match="resnet3000"):
        UNet({"encoder": "resnet3000"}).build(INFO)


def test_bad_decoder_channels():
    with pytest.raises(KDEngineError, match="decoder_channels"):
        UNet({"encoder": "resnet18", "decoder_channels": [8, 4]}).build(INFO)


def test_params_are_validated():
    with pytest.raises(ValidationError, match="encoder_depth"):
        UNet({"encoder_depth": 7})
    with pytest.raises(ValidationError, match="encoderr"):
        UNet({"encoderr": "resnet18"})
