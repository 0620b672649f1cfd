"""Dense distillation terms of the edge plugin (soft_bce, pixel_kl, cwd): each against its formula
written out with loops, their minima, the T^2 scaling, the cwd adapter, the contract checks on real
U-Nets, feature hints on U-Net decoder blocks, registration, and tiny end-to-end runs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

import kdengine
from kdengine import DataInfo, KDEngineError, LossContext, testing
from kdengine.plugins.catalog import get_catalog
from kdengine.cli import main
from kdengine_edges.dense_kd import ChannelWiseDistillation, PixelKL, SoftBCE
from kdengine_edges.models import UNet

pytestmark = pytest.mark.usefixtures("one_thread")

EDGES = DataInfo(task="edges", in_channels=3)
TEACHER = {"encoder": "resnet18", "decoder_channels": [32, 32, 32, 32, 16]}
STUDENT = {"encoder": "mobilenet_v2", "decoder_channels": [16, 16, 16, 16, 8]}


def context(student, teacher, targets=None, **features):
    targets = torch.zeros(student.shape[0], 1, *student.shape[-2:]) if targets is None else targets
    return LossContext(inputs=torch.zeros(student.shape[0], 3, *student.shape[-2:]), targets=targets,
                       student=student, teacher=teacher, **features)


def logits(*shape, seed=0, scale=2.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


# ---------------------------------------------------------------------------------------------
# references, written element by element


def soft_bce_reference(zs, zt, t):
    total, count = 0.0, 0
    for s, tt in zip(zs.flatten().tolist(), zt.flatten().tolist()):
        p, q = sigmoid(tt / t), sigmoid(s / t)
        total += -(p * math.log(q) + (1 - p) * math.log(1 - q))
        count += 1
    return t * t * total / count


def pixel_kl_reference(zs, zt, t):
    batch, channels, height, width = zs.shape
    total = 0.0
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                s = [float(zs[b, c, i, j]) / t for c in range(channels)]
                tt = [float(zt[b, c, i, j]) / t for c in range(channels)]
                if channels == 1:  # two classes with logits (z, 0)
                    s, tt = s + [0.0], tt + [0.0]
                ps, pt = softmax(s), softmax(tt)
                total += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    return t * t * total / (batch * height * width)


def cwd_reference(ys, yt, t):
    batch, channels = ys.shape[:2]
    total = 0.0
    for b in range(batch):
        for c in range(channels):
            phi_s = softmax([v / t for v in ys[b, c].flatten().tolist()])
            phi_t = softmax([v / t for v in yt[b, c].flatten().tolist()])
            total += sum(p * math.log(p / q) for p, q in zip(phi_t, phi_s))
    return t * t * total / (channels * batch)


# ---------------------------------------------------------------------------------------------
# formulas


@pytest.mark.parametrize("t", [1.0, 2.5])
def test_soft_bce_matches_its_formula(t):
    zs, zt = logits(2, 1, 2, 3, seed=1), logits(2, 1, 2, 3, seed=2)
    got = SoftBCE({"temperature": t})(context(zs, zt))
    assert math.isclose(float(got), soft_bce_reference(zs, zt, t), rel_tol=1e-5)


def test_soft_bce_is_smallest_where_the_student_equals_the_teacher():
    zt = logits(1, 1, 3, 3, seed=3)
    zs = zt.clone().requires_grad_(True)
    term = SoftBCE({"temperature": 2.0})
    at_teacher = term(context(zs, zt))
    at_teacher.backward()
    assert zs.grad.abs().max() < 1e-7
    # the minimum is the teacher's binary entropy (times T^2), not 0
    p = torch.sigmoid(zt / 2.0)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean() * 4.0
    assert torch.allclose(at_teacher.detach(), entropy, atol=1e-6)
    for seed in range(3):
        nudged = zt + 0.3 * logits(1, 1, 3, 3, seed=10 + seed, scale=1.0)
        assert term(context(nudged, zt)) > at_teacher


def test_soft_bce_and_pixel_kl_leave_padded_pixels_out():
    zs, zt = logits(1, 1, 1, 2, seed=4), logits(1, 1, 1, 2, seed=5)
    targets = torch.tensor([[[[0.0, -1.0]]]])  # the second pixel is collate padding
    for term, reference in ((SoftBCE(), soft_bce_reference), (PixelKL(), pixel_kl_reference)):
        got = term(context(zs, zt, targets))
        assert math.isclose(float(got), reference(zs[..., :1], zt[..., :1], 1.0), rel_tol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t", [1.0, 3.0])
def test_pixel_kl_matches_its_formula(channels, t):
    zs, zt = logits(2, channels, 2, 2, seed=6), logits(2, channels, 2, 2, seed=7)
    got = PixelKL({"temperature": t})(context(zs, zt))
    assert math.isclose(float(got), pixel_kl_reference(zs, zt, t), rel_tol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_kl_is_zero_with_zero_gradient_where_the_student_equals_the_teacher(channels):
    zt = logits(2, channels, 3, 3, seed=8)
    zs = zt.clone().requires_grad_(True)
    value = PixelKL({"temperature": 2.0})(context(zs, zt))
    value.backward()
    assert abs(float(value.detach())) < 1e-6 and zs.grad.abs().max() < 1e-7


def test_pixel_kl_on_an_edge_map_is_soft_bce_minus_the_teacher_entropy():
    zt = logits(2, 1, 4, 4, seed=9)
    grads, values = [], []
    for term in (SoftBCE({"temperature": 2.0}), PixelKL({"temperature": 2.0})):
        zs = logits(2, 1, 4, 4, seed=10).requires_grad_(True)
        value = term(context(zs, zt))
        value.backward()
        values.append(value.detach())
        grads.append(zs.grad)
    p = torch.sigmoid(zt / 2.0)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean() * 4.0
    assert torch.allclose(values[0] - values[1], entropy, atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("t", [1.0, 4.0])
def test_cwd_matches_the_papers_formula(channels, t):
    ys, yt = logits(2, channels, 2, 3, seed=11), logits(2, channels, 2, 3, seed=12)
    got = ChannelWiseDistillation({"temperature": t})(context(ys, yt))
    assert math.isclose(float(got), cwd_reference(ys, yt, t), rel_tol=1e-5)


def test_cwd_is_zero_where_the_student_equals_the_teacher_and_ignores_a_per_channel_shift():
    yt = logits(2, 3, 4, 4, seed=13)
    term = ChannelWiseDistillation({"temperature": 2.0})
    assert abs(float(term(context(yt.clone(), yt)))) < 1e-6
    # a spatial softmax is blind to adding a constant to a whole channel
    shifted = yt + torch.tensor([1.0, -2.0, 5.0]).view(1, 3, 1, 1)
    assert abs(float(term(context(shifted, yt)))) < 1e-5


# ---------------------------------------------------------------------------------------------
# temperature


@pytest.mark.parametrize("cls, reference", [
    (SoftBCE, soft_bce_reference), (PixelKL, pixel_kl_reference), (ChannelWiseDistillation, cwd_reference),
])
def test_t_squared_scaling(cls, reference):
    """The value is T^2 times the divergence of the softened maps, which keeps the gradient's scale
    roughly independent of T once T is large (Hinton et al. 2015): from T = 20 to 40 the gradient
    changes by under 5 %, where without the factor it would shrink by 4x."""
    zs, zt = logits(2, 2, 3, 3, seed=14), logits(2, 2, 3, 3, seed=15)
    if cls is SoftBCE:
        zs, zt = zs[:, :1], zt[:, :1]
    for t in (2.0, 3.0):  # T^2 times the plain (T = 1) divergence of the logits divided by T
        value = cls({"temperature": t})(context(zs, zt))
        assert math.isclose(float(value), t * t * reference(zs / t, zt / t, 1.0), rel_tol=1e-5)
    grads = []
    for t in (20.0, 40.0):
        student = zs.clone().requires_grad_(True)
        cls({"temperature": t})(context(student, zt)).backward()
        grads.append(student.grad)
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    assert (grads[0] - grads[1]).norm() < 0.05 * grads[0].norm()


# ---------------------------------------------------------------------------------------------
# cwd on features: the adapter


def test_cwd_on_features_adapts_channels_and_grids():
    student_feature = logits(2, 8, 8, 8, seed=16).requires_grad_(True)
    teacher_feature = logits(2, 4, 4, 4, seed=17)
    term = ChannelWiseDistillation({"temperature": 2.0, "student_layer": "s.block",
                                    "teacher_layer": "t.block"})
    assert term.student_taps() == ["s.block"] and term.teacher_taps() == ["t.block"]
    ctx = context(logits(2, 1, 8, 8), logits(2, 1, 8, 8), student_features={"s.block": student_feature},
                  teacher_features={"t.block": teacher_feature})
    with pytest.raises(KDEngineError, match="setup"):
        term(ctx)
    term.setup(ctx)
    assert isinstance(term.adapter, torch.nn.Conv2d)
    assert tuple(term.adapter.weight.shape) == (4, 8, 1, 1)
    value = term(ctx)
    with torch.no_grad():  # the formula on the adapted, average-pooled student feature
        adapted = torch.nn.functional.adaptive_avg_pool2d(term.adapter(student_feature), (4, 4))
    assert math.isclose(float(value), cwd_reference(adapted, teacher_feature, 2.0), rel_tol=1e-5)
    value.backward()
    assert term.adapter.weight.grad.abs().sum() > 0 and student_feature.grad.abs().sum() > 0


def test_cwd_on_features_with_equal_channels_needs_no_adapter():
    feature = logits(1, 4, 4, 4, seed=18)
    term = ChannelWiseDistillation({"student_layer": "a", "teacher_layer": "b"})
    ctx = context(logits(1, 1, 4, 4), logits(1, 1, 4, 4), student_features={"a": feature},
                  teacher_features={"b": feature.clone()})
    term.setup(ctx)
    assert isinstance(term.adapter, torch.nn.Identity) and not list(term.parameters())
    assert abs(float(term(ctx))) < 1e-6


def test_params_are_validated():
    with pytest.raises(ValidationError, match="both student_layer and teacher_layer"):
        ChannelWiseDistillation({"student_layer": "decoder.blocks.3"})
    for cls in (SoftBCE, PixelKL, ChannelWiseDistillation):
        testing.check_params(cls, {"temperature": 2.0}, [{"temperature": 0.0}, {"temperature": -1.0}])


def test_mismatched_outputs_and_missing_teacher_are_clear_errors():
    zs = logits(1, 1, 4, 4)
    for term in (SoftBCE(), PixelKL(), ChannelWiseDistillation()):
        with pytest.raises(KDEngineError, match="teacher's output"):
            term(context(zs, None))
        with pytest.raises(KDEngineError, match="differ in shape"):
            term(context(zs, logits(1, 2, 4, 4)))
    with pytest.raises(KDEngineError, match=r"\(B, C, H, W\)"):
        PixelKL()(context(logits(2, 5), logits(2, 5), targets=torch.tensor([0, 1])))


# ---------------------------------------------------------------------------------------------
# contract checks on real U-Nets (and on multi-class maps)


@pytest.fixture(scope="module")
def unets():
    torch.manual_seed(0)
    teacher = UNet(TEACHER).build(EDGES).eval()
    student = UNet(STUDENT).build(EDGES).train()
    return student, teacher


def unet_context(unets):
    student, teacher = unets
    inputs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.9).float()
    return lambda term: testing.context_from_models(term, student, teacher, inputs, targets)


CONTRACT_PARAMS = [
    (SoftBCE, {"temperature": 2.0}),
    (PixelKL, {"temperature": 2.0}),
    (ChannelWiseDistillation, {"temperature": 4.0}),
    (ChannelWiseDistillation, {"temperature": 1.0, "student_layer": "decoder.blocks.3",
                               "teacher_layer": "decoder.blocks.3"}),
]


@pytest.mark.parametrize("cls, params", CONTRACT_PARAMS)
def test_contract_on_unet_edge_maps(cls, params, unets):
    testing.check_params(cls, params, [{**params, "temperature": 0}])
    value = testing.check_loss_term(cls, params, unet_context(unets))
    assert float(value) > 0


@pytest.mark.parametrize("cls", [PixelKL, ChannelWiseDistillation])
def test_contract_on_multi_class_maps(cls):
    def segmentation_context(term):
        return context(logits(2, 4, 5, 5, seed=19), logits(2, 4, 5, 5, seed=20),
                       targets=torch.randint(0, 4, (2, 5, 5)))

    testing.check_loss_term(cls, {"temperature": 2.0}, segmentation_context)


# ---------------------------------------------------------------------------------------------
# feature hints on U-Net decoder blocks, with the classification and superres plugins' terms


@pytest.mark.parametrize("name, params", [
    ("fitnets", {"student_layer": "decoder.blocks.3", "teacher_layer": "decoder.blocks.3"}),
    ("feature_match", {"student_layers": ["decoder.blocks.3"], "teacher_layers": ["decoder.blocks.3"]}),
])
def test_feature_hints_work_on_unet_decoder_blocks(name, params, unets):
    cls = get_catalog().get("loss", name)
    testing.check_loss_term(cls, params, unet_context(unets))
    term = cls(params)
    ctx = unet_context(unets)(term)
    assert ctx.student_features["decoder.blocks.3"].shape[1] == 16
    assert ctx.teacher_features["decoder.blocks.3"].shape[1] == 32
    term.setup(ctx)
    adapter = term.adapter if name == "fitnets" else term.adapters[0]
    assert tuple(adapter.weight.shape) == (32, 16, 1, 1)


def test_feature_hints_pool_a_finer_student_grid_to_the_teachers():
    """A shallower student decoder (encoder_depth 4) ends a block earlier: its decoder.blocks.3 is
    the full-resolution map, the teacher's is at half resolution; the hint pools it down."""
    torch.manual_seed(0)
    teacher = UNet(TEACHER).build(EDGES).eval()
    student = UNet({"encoder": "mobilenet_v2", "encoder_depth": 4,
                    "decoder_channels": [16, 16, 16, 8]}).build(EDGES).train()
    inputs = torch.rand(2, 3, 32, 32)
    params = {"student_layer": "decoder.blocks.3", "teacher_layer": "decoder.blocks.3"}
    factory = lambda term: testing.context_from_models(term, student, teacher, inputs, torch.zeros(2, 1, 32, 32))  # noqa: E731
    ctx = factory(ChannelWiseDistillation(params))
    assert ctx.student_features["decoder.blocks.3"].shape[-2:] == (32, 32)
    assert ctx.teacher_features["decoder.blocks.3"].shape[-2:] == (16, 16)
    testing.check_loss_term(get_catalog().get("loss", "fitnets"), params, factory)
    testing.check_loss_term(ChannelWiseDistillation, params, factory)


# ---------------------------------------------------------------------------------------------
# registration


def test_registered_and_listed(capsys):
    catalog = get_catalog(refresh=True)
    for name, cls in (("soft_bce", SoftBCE), ("pixel_kl", PixelKL), ("cwd", ChannelWiseDistillation)):
        assert catalog.get("loss", name) is cls
        assert catalog.entry("loss", name).plugin == "edges"
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("soft_bce", "pixel_kl", "cwd"))


# ---------------------------------------------------------------------------------------------
# end to end: a tiny edge recipe with each dense term as its KD term

TINY_EDGE = {
    "run": {"name": "edge-dense-kd", "seed": 0},
    "data": {"name": "synthetic_edges", "params": {"size": 32, "train_size": 8, "val_size": 4, "test_size": 4}},
    "teacher": {"name": "unet", "params": TEACHER, "train": {"epochs": 1}},
    "student": {"name": "unet", "params": STUDENT},
    "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "baseline": False,
              "optimizer": {"name": "adam", "lr": 3e-4}, "monitor": "dice"},
    "loss": [{"name": "weighted_bce", "weight": 0.5, "params": {"pos_weight": 10.0}}],
    "metric": [{"name": "dice"}],
}


@pytest.mark.parametrize("kd", [
    {"name": "soft_bce", "weight": 1.0, "params": {"temperature": 2.0}},
    {"name": "cwd", "weight": 1.0, "params": {"temperature": 4.0}},
    {"name": "cwd", "weight": 1.0, "params": {"student_layer": "decoder.blocks.3",
                                              "teacher_layer": "decoder.blocks.3"}},
], ids=["soft_bce", "cwd", "cwd-features"])
def test_tiny_edge_recipe_runs_with_a_dense_kd_term(kd, tmp_path):
    recipe = copy.deepcopy(TINY_EDGE)
    recipe["loss"].append(kd)
    results = kdengine.run(recipe, progress=False, output_dir=tmp_path)
    distilled = results.stage("distilled")
    assert distilled is not None and distilled.history
    losses = distilled.history[-1].losses
    assert math.isfinite(losses[kd["name"]]) and losses[kd["name"]] > 0
    assert 0.0 <= distilled.last["dice"] <= 1.0
