"""Super-resolution loss terms: L1, feature matching across SwinIR tokens and CNN maps, perceptual."""

from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import ValidationError
from torchvision.models import vgg19

from kdengine import DataInfo, LossContext
from kdengine.plugins.features import FeatureTaps
from kdengine_superres.losses import (L1, FeatureMatch, Perceptual, TeacherL1, token_map, vgg19_features,
                                      vgg19_layer_names)
from kdengine_superres.models import AttentionSRNet, SwinIR

INFO = DataInfo(task="superres", in_channels=3, scale=4)
warnings.filterwarnings("ignore", message="torch.meshgrid")


def test_l1_is_mean_absolute_error():
    out = torch.zeros(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 3, 4, 4), 0.25)
    value = L1({})(LossContext(inputs=None, targets=target, student=out))
    assert value.item() == pytest.approx(0.25)
    value.backward()
    assert out.grad.abs().sum() > 0


def test_teacher_l1_is_mean_absolute_difference_to_the_teacher_output():
    student_out = torch.zeros(2, 3, 4, 4, requires_grad=True)
    teacher_out = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) / 100
    with torch.inference_mode():  # as the engine computes it
        frozen = teacher_out.clone()
    ctx = LossContext(inputs=None, targets=torch.ones(2, 3, 4, 4), student=student_out, teacher=frozen)
    value = TeacherL1({})(ctx)
    assert value.item() == pytest.approx(teacher_out.abs().mean().item())  # targets play no part
    assert TeacherL1.needs_teacher


def test_teacher_l1_gradient_reaches_the_student_and_not_the_teacher():
    torch.manual_seed(0)
    teacher = AttentionSRNet({"blocks": 1, "channels": 8}).build(INFO).eval()
    student = AttentionSRNet({"blocks": 1, "channels": 4}).build(INFO)
    x = torch.rand(2, 3, 6, 6)
    with torch.inference_mode():
        t_out = teacher(x)
    s_out = student(x)
    value = TeacherL1({})(LossContext(inputs=x, targets=None, student=s_out, teacher=t_out))
    value.backward()
    # d/ds mean|s - t| = sign(s - t) / N
    assert student.tail.weight.grad is not None and student.tail.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    s = s_out.detach().clone().requires_grad_(True)
    TeacherL1({})(LossContext(inputs=x, targets=None, student=s, teacher=t_out)).backward()
    torch.testing.assert_close(s.grad, torch.sign(s.detach() - t_out) / s.numel())


def test_token_map_crops_the_window_padding():
    tokens = torch.arange(2 * 12 * 8 * 5, dtype=torch.float32).view(2, 12 * 8, 5)
    fmap = token_map(tokens, (10, 6))  # SwinIR padded a 10x6 input to 12x8
    assert fmap.shape == (2, 5, 10, 6)
    # token (row 1, col 0) of the padded 12x8 grid is token index 8
    torch.testing.assert_close(fmap[0, :, 1, 0], tokens[0, 8])


def _distill_context(teacher, student, term, x, y):
    with FeatureTaps(student, term.student_taps()) as s_taps, FeatureTaps(teacher, term.teacher_taps()) as t_taps:
        with torch.inference_mode():
            t_out = teacher(x)
        t_feats = dict(t_taps.features)  # inference tensors, as the engine may pass them
        s_out = student(x)
        return LossContext(inputs=x, targets=y, student=s_out, teacher=t_out,
                           student_features=dict(s_taps.features), teacher_features=t_feats)


def test_feature_match_swinir_tokens_to_cnn_maps_with_adapter_and_gradient():
    torch.manual_seed(0)
    teacher = SwinIR({"size": "tiny", "embed_dim": 12, "depths": [2], "num_heads": [2],
                      "window_size": 4}).build(INFO).eval()
    student = AttentionSRNet({"blocks": 2, "channels": 8}).build(INFO)
    term = FeatureMatch({"student_layers": ["body.1"], "teacher_layers": ["layers.0"]})
    x, y = torch.rand(2, 3, 10, 6), torch.rand(2, 3, 40, 24)
    ctx = _distill_context(teacher, student, term, x, y)
    term.setup(ctx)
    assert isinstance(term.adapters[0], torch.nn.Conv2d)
    assert term.adapters[0].weight.shape == (12, 8, 1, 1)  # student 8 -> teacher 12 channels
    value = term(ctx)
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    value.backward()
    assert student.head.weight.grad is not None and student.head.weight.grad.abs().sum() > 0
    assert term.adapters[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_feature_match_cnn_to_cnn_resizes_and_skips_adapter_when_channels_agree():
    teacher = AttentionSRNet({"blocks": 2, "channels": 8}).build(INFO)
    student = AttentionSRNet({"blocks": 2, "channels": 8}).build(INFO)
    term = FeatureMatch({"student_layers": ["body.0"], "teacher_layers": ["upsample.1"]})
    x = torch.rand(1, 3, 6, 6)
    ctx = _distill_context(teacher, student, term, x, torch.rand(1, 3, 24, 24))
    term.setup(ctx)
    assert isinstance(term.adapters[0], torch.nn.Identity)
    value = term(ctx)  # 6x6 student map vs 12x12 teacher map
    value.backward()
    assert torch.isfinite(value) and student.head.weight.grad.abs().sum() > 0


def test_feature_match_is_zero_for_identical_features():
    term = FeatureMatch({"student_layers": ["a"], "teacher_layers": ["b"]})
    feature = torch.rand(2, 4, 5, 5)
    ctx = LossContext(inputs=torch.rand(2, 3, 5, 5), targets=None, student=None,
                      student_features={"a": feature}, teacher_features={"b": feature.clone()})
    term.setup(ctx)
    assert term(ctx).item() == pytest.approx(0.0)


def test_feature_match_layers_must_pair():
    with pytest.raises(ValidationError, match="pair up"):
        FeatureMatch({"student_layers": ["body.1", "body.2"], "teacher_layers": ["layers.0"]})


def test_perceptual_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ValidationError) as info:
        Perceptual({})
    message = str(info.value)
    assert "vgg19-dcbb9e9d.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(ValidationError, match="nope.pth"):
        Perceptual({"weights": str(tmp_path / "nope.pth")})


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.features = vgg19_features()  # saved as features.<i>.weight, like torchvision's file
    return holder


def test_perceptual_with_given_weights_is_differentiable_and_zero_on_identity(tmp_path, vgg):
    path = tmp_path / "vgg19.pth"
    torch.save(vgg.state_dict(), path)  # randomly initialised: only the plumbing is tested
    term = Perceptual({"weights": str(path), "layers": ["relu1_2", "conv2_1"]})
    assert not any(True for _ in term.parameters())  # the frozen VGG is not trained with the student
    target = torch.rand(1, 3, 32, 32)
    out = target.clone().requires_grad_(True)
    same = term(LossContext(inputs=None, targets=target, student=out))
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    noisy = (target + 0.1 * torch.randn_like(target)).requires_grad_(True)
    value = term(LossContext(inputs=None, targets=target, student=noisy))
    value.backward()
    assert value > 0 and noisy.grad.abs().sum() > 0


def test_perceptual_refuses_a_file_that_is_not_vgg19(tmp_path):
    from kdengine import CheckpointError

    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="other.pth"):
        Perceptual({"weights": str(path)})


def test_vgg19_layer_names_match_torchvision():
    names = vgg19_layer_names()
    with torch.device("meta"):  # torchvision's own VGG19, without the cost of initialising it
        features = vgg19(weights=None).features
    torch.testing.assert_close(  # the features-only builder has torchvision's exact layout
        {k: v.shape for k, v in features.state_dict().items()},
        {k: v.shape for k, v in vgg19_features().state_dict().items()})
    assert len(names) == len(features)
    assert isinstance(features[names.index("relu5_4")], torch.nn.ReLU)
    assert isinstance(features[names.index("conv5_4")], torch.nn.Conv2d)
    assert isinstance(features[names.index("pool3")], torch.nn.MaxPool2d)
