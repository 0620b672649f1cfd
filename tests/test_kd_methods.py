"""The KD methods of the classification plugin (FitNets, AT, DIST, CRD): each against its formula on
hand-sized tensors, gradients into the student and the adapters, and one tiny run each."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdengine import DataInfo, KDEngineError, LossContext
from kdengine import testing
from kdengine_classification.kd_methods import DIST, AttentionTransfer, ContrastiveRepresentation, FitNets
from kdengine_classification.models import TimmModel, TorchvisionModel

DIGITS = DataInfo(task="classification", in_channels=1, num_classes=10)


pytestmark = pytest.mark.usefixtures("one_thread")


def feature_ctx(student: dict, teacher: dict, logits_s=None, logits_t=None) -> LossContext:
    return LossContext(inputs=None, targets=None, student=logits_s, teacher=logits_t,
                       student_features=student, teacher_features=teacher)


# ---------------------------------------------------------------------------------------------
# FitNets


def test_fitnets_is_the_mse_of_the_adapted_pooled_student_feature():
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    teacher = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    term = FitNets({"student_layer": "s", "teacher_layer": "t"})
    ctx = feature_ctx({"s": student}, {"t": teacher})
    term.setup(ctx)
    assert isinstance(term.adapter, nn.Conv2d) and term.adapter.weight.shape == (2, 1, 1, 1)
    with torch.no_grad():
        term.adapter.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
    # adapted maps: 2*s -> mean 5; -1*s -> mean -2.5; average-pooled to the teacher's 1x1 grid
    expected = ((5 - 1) ** 2 + (-2.5 - 0) ** 2) / 2
    assert term(ctx).item() == pytest.approx(expected)


def test_fitnets_interpolates_a_smaller_student_grid_and_needs_no_adapter_for_equal_channels():
    student = torch.full((1, 1, 1, 1), 3.0)
    teacher = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    term = FitNets({"student_layer": "s", "teacher_layer": "t"})
    ctx = feature_ctx({"s": student}, {"t": teacher})
    term.setup(ctx)
    assert isinstance(term.adapter, nn.Identity)
    assert term(ctx).item() == pytest.approx((4 + 1 + 0 + 1) / 4)


def test_fitnets_reads_transformer_tokens_as_square_maps():
    tokens = torch.arange(8.0).view(1, 4, 2)  # (B, N=4 tokens, C=2) -> (1, 2, 2, 2)
    term = FitNets({"student_layer": "s", "teacher_layer": "t"})
    ctx = feature_ctx({"s": tokens}, {"t": tokens.transpose(1, 2).reshape(1, 2, 2, 2)})
    term.setup(ctx)
    assert term(ctx).item() == pytest.approx(0.0)


def test_fitnets_without_setup_says_so():
    term = FitNets({"student_layer": "s", "teacher_layer": "t"})
    with pytest.raises(KDEngineError, match="setup"):
        term(feature_ctx({"s": torch.zeros(1, 1, 1, 1)}, {"t": torch.zeros(1, 1, 1, 1)}))


# ---------------------------------------------------------------------------------------------
# attention transfer


def _normalised(values):
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def test_attention_transfer_matches_the_formula_by_hand():
    # student (1, 2 channels, 1x2): channel 0 = [1, 2], channel 1 = [0, 1] -> A = [1, 5]
    student = torch.tensor([[[1.0, 2.0]], [[0.0, 1.0]]]).unsqueeze(0)
    # teacher (1, 3 channels, 1x2), all ones -> A = [3, 3]; channels need not agree
    teacher = torch.ones(1, 3, 1, 2)
    q_s, q_t = _normalised([1, 5]), _normalised([3, 3])
    expected = 1000 * sum((a - b) ** 2 for a, b in zip(q_s, q_t)) / 2
    term = AttentionTransfer({"pairs": [["s", "t"]]})
    assert term(feature_ctx({"s": student}, {"t": teacher})).item() == pytest.approx(expected, rel=1e-5)

    # p = 1 and beta scale: A = sum_c |F| = [1, 3] vs [3, 3]
    q_s1 = _normalised([1, 3])
    term1 = AttentionTransfer({"pairs": [["s", "t"]], "p": 1.0, "beta": 2.0})
    expected1 = 2.0 * sum((a - b) ** 2 for a, b in zip(q_s1, q_t)) / 2
    assert term1(feature_ctx({"s": student}, {"t": teacher})).item() == pytest.approx(expected1, rel=1e-5)


def test_attention_transfer_sums_over_pairs_and_pools_the_larger_grid():
    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 4, 4), torch.randn(2, 8, 2, 2)
    one = AttentionTransfer({"pairs": [["a", "b"]]})(feature_ctx({"a": a}, {"b": b}))
    two = AttentionTransfer({"pairs": [["a", "b"], ["a", "b"]]})(feature_ctx({"a": a}, {"b": b}))
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-6)
    # pooling the student's attention map 4x4 -> 2x2 by hand gives the same value
    att = a.pow(2).sum(1)
    pooled = att.view(2, 2, 2, 2, 2).mean(dim=(2, 4))
    q_s = torch.nn.functional.normalize(pooled.flatten(1), dim=1)
    q_t = torch.nn.functional.normalize(b.pow(2).sum(1).flatten(1), dim=1)
    assert one.item() == pytest.approx(1000 * (q_s - q_t).pow(2).mean().item(), rel=1e-5)
    assert AttentionTransfer({"pairs": [["a", "a"]]})(feature_ctx({"a": a}, {"a": a})).item() == pytest.approx(0, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# DIST


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _pearson(u, v):
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v))
    su = math.sqrt(sum((a - mu) ** 2 for a in u))
    sv = math.sqrt(sum((b - mv) ** 2 for b in v))
    return cov / (su * sv)


def test_dist_matches_the_formula_by_hand():
    zs = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.3, 0.2, 0.1]]
    zt = [[2.0, 1.0, 0.0], [1.0, 0.0, 2.0], [0.0, 0.5, 1.0]]
    T, beta, gamma = 2.0, 1.5, 0.5
    ys = [_softmax(r, T) for r in zs]
    yt = [_softmax(r, T) for r in zt]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ys, yt)) / 3
    cols_s, cols_t = list(zip(*ys)), list(zip(*yt))
    intra = 1 - sum(_pearson(a, b) for a, b in zip(cols_s, cols_t)) / 3
    expected = T * T * (beta * inter + gamma * intra)
    term = DIST({"beta": beta, "gamma": gamma, "temperature": T})
    value = term(LossContext(None, None, torch.tensor(zs), torch.tensor(zt)))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_dist_is_zero_for_matching_relations():
    z = torch.randn(5, 7)
    assert DIST()(LossContext(None, None, z, z)).item() == pytest.approx(0.0, abs=1e-6)
    assert DIST()(LossContext(None, None, z, -z)).item() > 1.0


# ---------------------------------------------------------------------------------------------
# CRD (InfoNCE variant)


def _info_nce_by_hand(anchors, candidates, tau):
    total = 0.0
    for i, a in enumerate(anchors):
        logits = [sum(x * y for x, y in zip(a, c)) / tau for c in candidates]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / len(anchors)


def _identity_heads(term):
    for head in (term.student_head, term.teacher_head):
        with torch.no_grad():
            head.weight.copy_(torch.eye(2))
            head.bias.zero_()


def test_crd_in_batch_infonce_matches_the_formula_by_hand():
    f_s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    f_t = torch.tensor([[3.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1)  # a map: pooled to a vector
    term = ContrastiveRepresentation({"student_layer": "s", "teacher_layer": "t", "feature_dim": 2,
                                      "temperature": 0.5})
    ctx = feature_ctx({"s": f_s}, {"t": f_t})
    term.setup(ctx)
    _identity_heads(term)
    s = [[1.0, 0.0], [0.0, 1.0]]
    t = [[1.0, 0.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]]
    expected = 0.5 * (_info_nce_by_hand(s, t, 0.5) + _info_nce_by_hand(t, s, 0.5))
    assert term(ctx).item() == pytest.approx(expected, rel=1e-5)


def test_crd_queue_adds_past_embeddings_as_negatives():
    term = ContrastiveRepresentation({"student_layer": "s", "teacher_layer": "t", "feature_dim": 2,
                                      "temperature": 1.0, "queue_size": 3})
    first = feature_ctx({"s": torch.tensor([[1.0, 1.0], [1.0, -1.0]])}, {"t": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
    term.setup(first)
    _identity_heads(term)
    term.train()
    term(first)
    assert int(term.queue_filled) == 2
    second = feature_ctx({"s": torch.tensor([[0.0, 1.0], [-1.0, 0.0]])}, {"t": torch.tensor([[0.0, 1.0], [1.0, 1.0]])})
    r = 1 / math.sqrt(2)
    s2, t2 = [[0.0, 1.0], [-1.0, 0.0]], [[0.0, 1.0], [r, r]]
    queued_s, queued_t = [[r, r], [r, -r]], [[1.0, 0.0], [0.0, 1.0]]
    expected = 0.5 * (_info_nce_by_hand(s2, t2 + queued_t, 1.0) + _info_nce_by_hand(t2, s2 + queued_s, 1.0))
    assert term(second).item() == pytest.approx(expected, rel=1e-5)
    term(second)  # 6 embeddings seen, 3 kept: the oldest was overwritten
    assert int(term.queue_filled) == 3
    term.eval()
    before = term.queue_teacher.clone()
    term(first)
    assert torch.equal(before, term.queue_teacher)  # evaluation does not enqueue


# ---------------------------------------------------------------------------------------------
# gradients through real timm / torchvision models (teacher and student from different libraries)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    student = TorchvisionModel({"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True}).build(DIGITS)
    teacher = TimmModel({"model": "test_resnet"}).build(DIGITS).eval()
    return student.train(), teacher


CASES = {
    # student features.4 is 2x2 (8 channels), teacher layer1 is 2x2 (32 channels): a real adapter
    "fitnets": (FitNets, {"student_layer": "features.4", "teacher_layer": "layer1"}),
    # features.2 (4x4) vs conv1 (4x4) and features.4 vs layer1
    "attention_transfer": (AttentionTransfer, {"pairs": [["features.2", "conv1"], ["features.4", "layer1"]]}),
    "dist": (DIST, {"temperature": 4.0}),
    "crd": (ContrastiveRepresentation, {"student_layer": "classifier.0", "teacher_layer": "global_pool",
                                        "feature_dim": 16, "queue_size": 8}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_reaches_the_student_and_the_adapters(models, name):
    student, teacher = models
    cls, params = CASES[name]
    inputs = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3])
    captured = {}

    def factory(term):
        student.zero_grad(set_to_none=True)
        ctx = testing.context_from_models(term, student, teacher, inputs, targets)
        captured["term"] = term
        return ctx

    testing.check_loss_term(cls, params, factory)
    # the contract check saw student-side gradients; they also reach the student's weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    owned = list(captured["term"].parameters())
    if name in ("fitnets", "crd"):
        assert owned and all(p.grad is not None and p.grad.abs().sum() > 0 for p in owned)
    assert all(p.grad is None for p in teacher.parameters())


# ---------------------------------------------------------------------------------------------
# one tiny run each: digits, mobilenet_v2 x0.25, 1 epoch of 2 steps


RUN_LOSSES = {
    "fitnets": {"student_layer": "features.4", "teacher_layer": "features.4"},
    "attention_transfer": {"pairs": [["features.2", "features.2"], ["features.4", "features.4"]]},
    "dist": {"temperature": 4.0, "beta": 2.0, "gamma": 2.0},
    "crd": {"student_layer": "classifier.0", "teacher_layer": "classifier.0", "feature_dim": 16, "queue_size": 64},
}


@pytest.mark.parametrize("name", list(RUN_LOSSES))
def test_tiny_run_with_each_method(name, tiny_recipe, tmp_path):
    import kdengine

    tiny_recipe["run"]["name"] = f"kd-{name}"
    # small val and test splits keep the run short
    tiny_recipe["data"]["params"].update(train_size=1700, val_size=48, test_size=None)
    tiny_recipe["train"]["baseline"] = False
    # a wider teacher than the student, so feature terms need a real adapter
    tiny_recipe["teacher"]["params"]["width_mult"] = 0.5
    tiny_recipe["loss"] = [{"name": name, "weight": 0.5, "params": RUN_LOSSES[name]},
                           {"name": "cross_entropy", "weight": 0.5}]
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    distilled = results.stage("distilled")
    losses = distilled.history[0].losses
    assert name in losses and math.isfinite(losses[name]) and losses[name] > 0
    assert 0.0 <= distilled.best["top1"] <= 1.0
    assert (tmp_path / next(p.name for p in tmp_path.iterdir()) / "checkpoints" / "distilled" / "best.safetensors").is_file()
