"""The feature-based KD methods of the classification plugin (VID, OFD, FT, ReviewKD): each against
its paper's formula written as plain loops on hand-sized tensors (its modules set to known weights),
its minimum at teacher = student, gradients into the student (and the term's modules) but never the
teacher, its catalog entry, one tiny run each, and a shape mismatch caught by ``kdengine validate``."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch import nn

from kdengine import KDEngineError, LossContext
from kdengine import testing
from kdengine_classification.kd_methods.feature_methods import FEATURE_METHODS
from kdengine_classification.kd_methods.ft import FactorTransfer, factor_distance
from kdengine_classification.kd_methods.ofd import OverhaulFeature
from kdengine_classification.kd_methods.reviewkd import ReviewKD, hierarchical_context
from kdengine_classification.kd_methods.vid import VariationalInformation
from method_runs import distil_once

pytestmark = pytest.mark.usefixtures("one_thread")


def ctx_of(student: dict, teacher: dict) -> LossContext:
    return LossContext(inputs=None, targets=None, student=None, teacher=None,
                       student_features=student, teacher_features=teacher)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def identity_bn(bn: nn.BatchNorm2d) -> None:
    """An exact identity in eval mode: (x - 0) / sqrt((1 - eps) + eps) * 1 + 0."""
    bn.weight.fill_(1.0)
    bn.bias.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)


def identity_modules(module: nn.Module, bias: float = 0.0) -> None:
    """Dirac weights for every (transposed) convolution, identity BatchNorms."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.dirac_(m.weight)
                if m.bias is not None:
                    m.bias.fill_(bias)
            elif isinstance(m, nn.BatchNorm2d):
                identity_bn(m)


def shape(nested) -> tuple[int, ...]:
    out = []
    while isinstance(nested, list):
        out.append(len(nested))
        nested = nested[0]
    return tuple(out)


def conv1x1(weight, x):
    """A 1x1 convolution of a (B, C, H, W) nested list by a (O, C) matrix, without bias."""
    b, c, h, w = shape(x)
    return [[[[sum(weight[o][i] * x[n][i][y][z] for i in range(c)) for z in range(w)] for y in range(h)]
             for o in range(len(weight))] for n in range(b)]


def relu(x):
    return [[[[max(v, 0.0) for v in row] for row in ch] for ch in sample] for sample in x]


def elements(x):
    return [v for sample in x for ch in sample for row in ch for v in row]


def softplus(a):
    return math.log1p(math.exp(a))


# ---------------------------------------------------------------------------------------------
# VID


S_VID = [[[[1.0, -2.0]], [[0.5, 3.0]]], [[[0.0, 1.0]], [[-1.0, 2.0]]]]           # (2, 2, 1, 2)
T_VID = [[[[0.5, 1.0]], [[2.0, -1.0]], [[0.0, 0.3]]], [[[1.0, 1.5]], [[-0.5, 0.0]], [[2.0, 1.0]]]]  # (2, 3, 1, 2)
W1 = [[1.0, -0.5], [0.3, 0.8]]          # 2 -> mid 2
W2 = [[0.5, 1.0], [-1.0, 0.7]]          # mid -> mid
W3 = [[1.0, 0.2], [-0.4, 0.6], [0.3, -0.9]]  # mid -> 3
ALPHA = [0.3, -1.0, 2.0]


def vid_by_hand(s, t_, alphas, eps=1e-5):
    mean = conv1x1(W3, relu(conv1x1(W2, relu(conv1x1(W1, s)))))
    b, c, h, w = shape(t_)
    total = 0.0
    for n in range(b):
        for ch in range(c):
            var = softplus(alphas[ch]) + eps
            for y in range(h):
                for z in range(w):
                    total += 0.5 * (math.log(var) + (t_[n][ch][y][z] - mean[n][ch][y][z]) ** 2 / var)
    return total / (b * c * h * w)


def set_vid(term, weights=(W1, W2, W3), alphas=ALPHA, pair=0):
    with torch.no_grad():
        convs = [m for m in term.regressors[pair] if isinstance(m, nn.Conv2d)]
        for conv, weight in zip(convs, weights):
            conv.weight.copy_(t(weight)[:, :, None, None])
        term.alphas[pair].copy_(t(alphas))


def test_vid_matches_the_gaussian_nll_by_hand():
    term = VariationalInformation({"pairs": [["s", "t"]]})
    ctx = ctx_of({"s": t(S_VID)}, {"t": t(T_VID)})
    term.setup(ctx)
    assert [m.weight.shape for m in term.regressors[0] if isinstance(m, nn.Conv2d)] == \
        [(3, 2, 1, 1), (3, 3, 1, 1), (3, 3, 1, 1)]  # mid = the teacher's channels by default
    # the initial variance is the authors' 5
    assert term.variances()[0].tolist() == pytest.approx([5.0] * 3, rel=1e-5)

    term = VariationalInformation({"pairs": [["s", "t"], ["s", "t"]], "mid_channels": 2})
    term.setup(ctx)
    set_vid(term, pair=0)
    set_vid(term, alphas=[0.0, 0.0, 0.0], pair=1)
    expected = vid_by_hand(S_VID, T_VID, ALPHA) + vid_by_hand(S_VID, T_VID, [0.0] * 3)
    assert term(ctx).item() == pytest.approx(expected, rel=1e-5)


def test_vid_pools_a_larger_student_grid_to_the_teachers_first():
    student = torch.randn(2, 2, 2, 4, generator=torch.Generator().manual_seed(0))
    x = student.tolist()  # 2x4 -> 1x2: the mean of each 2x2 block
    pooled = [[[[sum(x[n][c][y][z] for y in range(2) for z in (2 * j, 2 * j + 1)) / 4 for j in range(2)]]
               for c in range(2)] for n in range(2)]
    term = VariationalInformation({"pairs": [["s", "t"]], "mid_channels": 2})
    term.setup(ctx_of({"s": student}, {"t": t(T_VID)}))
    set_vid(term)
    value = term(ctx_of({"s": student}, {"t": t(T_VID)})).item()
    assert value == pytest.approx(vid_by_hand(pooled, T_VID, ALPHA), rel=1e-5)


def test_vid_minimum_at_teacher_equal_student_is_half_the_log_variance():
    # identity regressor (dirac 1x1 convolutions; the ReLUs pass non-negative features unchanged)
    feature = torch.rand(3, 4, 2, 2, generator=torch.Generator().manual_seed(1)) + 0.1
    term = VariationalInformation({"pairs": [["s", "t"]]})
    term.setup(ctx_of({"s": feature}, {"t": feature}))
    identity_modules(term.regressors)
    alphas = [0.5, -2.0, 1.0, 3.0]
    with torch.no_grad():
        term.alphas[0].copy_(t(alphas))
    s = feature.clone().requires_grad_(True)
    value = term(ctx_of({"s": s}, {"t": feature}))
    value.backward()
    half_log_var = sum(0.5 * math.log(softplus(a) + 1e-5) for a in alphas) / 4
    assert value.item() == pytest.approx(half_log_var, rel=1e-5)   # not zero: 1/2 mean_c log sigma_c^2
    assert s.grad.abs().max().item() < 1e-7                        # the student is at its minimum
    assert term.alphas[0].grad.abs().min().item() > 0              # the variance still shrinks
    assert term(ctx_of({"s": feature * 1.5}, {"t": feature})).item() > value.item()

    # for a fixed residual the best variance is sigma_c^2 = mean r_c^2, where the loss is 1/2 (log + 1)
    teacher = feature + torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(2)) * 0.5
    r2 = ((teacher - feature) ** 2).mean(dim=(0, 2, 3))
    with torch.no_grad():
        term.alphas[0].copy_(torch.log(torch.expm1(r2 - 1e-5)))
    best = term(ctx_of({"s": feature}, {"t": teacher})).item()
    assert best == pytest.approx(sum(0.5 * (math.log(v) + 1) for v in r2.tolist()) / 4, rel=1e-4)
    for factor in (0.8, 1.25):
        with torch.no_grad():
            term.alphas[0].copy_(torch.log(torch.expm1(r2 * factor - 1e-5)))
        assert term(ctx_of({"s": feature}, {"t": teacher})).item() > best


# ---------------------------------------------------------------------------------------------
# OFD


T_OFD = [[[[-1.0, 2.0]], [[-0.5, -3.0]]], [[[-3.0, 0.5]], [[1.0, -1.5]]]]        # (2, 2, 1, 2), pre-ReLU
S_OFD = [[[[1.0, -1.0]]], [[[-2.0, 0.5]]]]                                          # (2, 1, 1, 2)
CONNECT = [[1.5], [-0.5]]                                                             # 1 -> 2 channels


def ofd_by_hand(s, t_, bn_weight, bn_bias, train: bool, eps=1e-5):
    b, c, h, w = shape(t_)
    margins = []
    for ch in range(c):
        negatives = [t_[n][ch][y][z] for n in range(b) for y in range(h) for z in range(w) if t_[n][ch][y][z] < 0]
        margins.append(sum(negatives) / len(negatives) if negatives else 0.0)
    conv = conv1x1(CONNECT, s)
    total = 0.0
    for ch in range(c):
        values = [conv[n][ch][y][z] for n in range(b) for y in range(h) for z in range(w)]
        mean, var = (sum(values) / len(values), sum((v - sum(values) / len(values)) ** 2 for v in values) / len(values)) \
            if train else (0.0, 1.0 - eps)
        for n in range(b):
            for y in range(h):
                for z in range(w):
                    student = (conv[n][ch][y][z] - mean) / math.sqrt(var + eps) * bn_weight[ch] + bn_bias[ch]
                    target = max(t_[n][ch][y][z], margins[ch])
                    if not (student <= target and target <= 0):
                        total += (target - student) ** 2
    return margins, total / b


@pytest.mark.parametrize("train", [False, True])
def test_ofd_matches_the_partial_l2_by_hand(train):
    term = OverhaulFeature({"pairs": [["s", "t"]]})
    ctx = ctx_of({"s": t(S_OFD)}, {"t": t(T_OFD)})
    term.setup(ctx)
    conv, bn = term.connectors[0]
    bn_weight, bn_bias = [1.2, 0.7], [0.1, -0.3]
    with torch.no_grad():
        conv.weight.copy_(t(CONNECT)[:, :, None, None])
        identity_bn(bn)
        bn.weight.copy_(t(bn_weight))
        bn.bias.copy_(t(bn_bias))
    term.train(train)
    margins, expected = ofd_by_hand(S_OFD, T_OFD, bn_weight, bn_bias, train)
    assert term.margin(0).flatten().tolist() == pytest.approx(margins)        # [-2, -5/3]
    assert term(ctx).item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0


def test_ofd_margin_comes_from_the_first_batch_and_is_kept_as_a_buffer():
    teacher = t(T_OFD)
    term = OverhaulFeature({"pairs": [["s", "t"]]})
    term.setup(ctx_of({"s": t(S_OFD)}, {"t": teacher}))
    assert "margin_0" in term.state_dict() and "margin_0" not in dict(term.named_parameters())
    before = term.margin(0).clone()
    term(ctx_of({"s": t(S_OFD)}, {"t": teacher * 10}))
    assert torch.equal(term.margin(0), before)
    # a channel without negative values gets margin 0: a plain ReLU
    term.setup(ctx_of({"s": t(S_OFD)}, {"t": teacher.abs()}))
    assert term.margin(0).flatten().tolist() == [0.0, 0.0]


def test_ofd_is_zero_at_teacher_equal_student_with_an_identity_connector():
    teacher = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    term = OverhaulFeature({"pairs": [["s", "t"]]})
    term.setup(ctx_of({"s": teacher}, {"t": teacher}))
    identity_modules(term.connectors)
    term.eval()
    assert bool((teacher < term.margin(0)).any())  # some responses lie below the margin: skipped
    s = teacher.clone().requires_grad_(True)
    value = term(ctx_of({"s": s}, {"t": teacher}))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-10)
    assert s.grad.abs().max().item() < 1e-6
    # a student below a negative target costs nothing; above it, it does
    below = torch.where(teacher <= 0, teacher - 0.1, teacher)
    assert term(ctx_of({"s": below}, {"t": teacher})).item() == pytest.approx(0.0, abs=1e-10)
    assert term(ctx_of({"s": teacher + 0.1}, {"t": teacher})).item() > 1e-3


# ---------------------------------------------------------------------------------------------
# FT


def l2_normalised(values):
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def test_factor_distance_matches_the_formula_by_hand():
    fs = [[[[1.0, 2.0]], [[0.5, -1.0]]], [[[3.0, 0.0]], [[1.0, 1.0]]]]
    ft = [[[[0.0, 1.0]], [[2.0, 1.0]]], [[[1.0, -1.0]], [[0.5, 2.0]]]]
    for p in (1.0, 2.0):
        expected = 0.0
        for a, b in zip(fs, ft):
            diff = [x - y for x, y in zip(l2_normalised(elements([b])), l2_normalised(elements([a])))]
            expected += sum(abs(d) ** p for d in diff) ** (1 / p)
        assert factor_distance(t(fs), t(ft), p).item() == pytest.approx(expected / 2, rel=1e-5)


def test_ft_matches_the_formula_by_hand_with_identity_modules():
    # teacher 4 channels -> factor k * 4 = 2 channels; with dirac convolutions and identity BNs
    # the factor is the teacher's first two channels, the reconstruction [t0, t1, 0, 0] and the
    # student's factor the student itself (LeakyReLU passes non-negative values unchanged)
    generator = torch.Generator().manual_seed(5)
    teacher, student = torch.rand(2, 4, 2, 2, generator=generator), torch.rand(2, 2, 2, 2, generator=generator)
    term = FactorTransfer({"student_layer": "s", "teacher_layer": "t", "reconstruction_weight": 0.5})
    ctx = ctx_of({"s": student}, {"t": teacher})
    term.setup(ctx)
    identity_modules(term)
    term.eval()
    tl, sl = teacher.tolist(), student.tolist()
    transfer = 0.0
    for n in range(2):
        factor_t = l2_normalised([v for ch in tl[n][:2] for row in ch for v in row])
        factor_s = l2_normalised([v for ch in sl[n] for row in ch for v in row])
        transfer += sum(abs(a - b) for a, b in zip(factor_t, factor_s))
    transfer /= 2
    reconstruction = sum(v * v for n in range(2) for ch in tl[n][2:] for row in ch for v in row) / (2 * 4 * 2 * 2)
    parts = term.parts(ctx)
    assert parts[0].item() == pytest.approx(transfer, rel=1e-5)
    assert parts[1].item() == pytest.approx(reconstruction, rel=1e-5)
    assert term(ctx).item() == pytest.approx(transfer + 0.5 * reconstruction, rel=1e-5)
    # the factor is invariant to the student's scale: a factor 3 s is as good as s
    assert term.parts(ctx_of({"s": student * 3}, {"t": teacher}))[0].item() == pytest.approx(transfer, rel=1e-5)


def test_ft_minimum_is_zero_transfer_at_teacher_equal_student_with_the_translator_as_the_encoder():
    feature = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(6))
    term = FactorTransfer({"student_layer": "s", "teacher_layer": "t"})
    term.setup(ctx_of({"s": feature}, {"t": feature}))
    term.translator.load_state_dict(term.paraphraser.encoder.state_dict())
    term.train()
    s = feature.clone().requires_grad_(True)
    transfer, reconstruction = term.parts(ctx_of({"s": s}, {"t": feature}))
    assert transfer.item() == pytest.approx(0.0, abs=1e-6)
    assert reconstruction.item() > 0  # the (untrained) paraphraser's reconstruction error: not zero
    transfer.backward()
    assert s.grad.abs().max().item() < 1e-6
    assert term.translator[0].weight.grad.abs().max().item() < 1e-6
    assert term.parts(ctx_of({"s": feature.flip(0)}, {"t": feature}))[0].item() > 1e-2


def test_ft_trains_the_paraphraser_by_reconstruction_only_and_the_student_by_transfer_only():
    generator = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(2, 3, 2, 2, generator=generator), torch.randn(2, 4, 2, 2, generator=generator)
    term = FactorTransfer({"student_layer": "s", "teacher_layer": "t"})
    term.setup(ctx_of({"s": student}, {"t": teacher}))
    s = student.clone().requires_grad_(True)
    transfer, reconstruction = term.parts(ctx_of({"s": s}, {"t": teacher}))
    transfer.backward(retain_graph=True)
    assert all(p.grad is None for p in term.paraphraser.parameters())  # the teacher's factor is detached
    assert s.grad.abs().sum() > 0
    s.grad = None
    reconstruction.backward()
    assert s.grad is None
    assert all(p.grad is not None for p in term.paraphraser.parameters())


# ---------------------------------------------------------------------------------------------
# ReviewKD


def pool_by_hand(x, level):
    """Adaptive average pooling of one (H, W) nested list to level x level."""
    h, w = len(x), len(x[0])
    out = []
    for i in range(level):
        y0, y1 = (i * h) // level, -((-(i + 1) * h) // level)
        row = []
        for j in range(level):
            x0, x1 = (j * w) // level, -((-(j + 1) * w) // level)
            block = [x[y][z] for y in range(y0, y1) for z in range(x0, x1)]
            row.append(sum(block) / len(block))
        out.append(row)
    return out


def mse_by_hand(a, b):
    diff = [(u - v) ** 2 for u, v in zip(elements(a), elements(b))]
    return sum(diff) / len(diff)


def hcl_by_hand(fs, ft, levels=(4, 2, 1)):
    h = len(fs[0][0])
    loss, weight, total = mse_by_hand(fs, ft), 1.0, 1.0
    for level in levels:
        if level >= h:
            continue
        weight /= 2
        pooled_s = [[pool_by_hand(ch, level) for ch in sample] for sample in fs]
        pooled_t = [[pool_by_hand(ch, level) for ch in sample] for sample in ft]
        loss += weight * mse_by_hand(pooled_s, pooled_t)
        total += weight
    return loss / total


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_hierarchical_context_loss_matches_the_formula_by_hand(size):
    generator = torch.Generator().manual_seed(size)
    fs, ft = torch.randn(2, 2, size, size, generator=generator), torch.randn(2, 2, size, size, generator=generator)
    expected = hcl_by_hand(fs.tolist(), ft.tolist())
    assert hierarchical_context(fs, ft, [4, 2, 1]).item() == pytest.approx(expected, rel=1e-5)
    if size == 8:  # all levels used: weights 1, 0.5, 0.25, 0.125 over their sum
        full = mse_by_hand(fs.tolist(), ft.tolist())
        pooled = [mse_by_hand([[pool_by_hand(c, lv) for c in s] for s in fs.tolist()],
                              [[pool_by_hand(c, lv) for c in s] for s in ft.tolist()]) for lv in (4, 2, 1)]
        assert expected == pytest.approx((full + 0.5 * pooled[0] + 0.25 * pooled[1] + 0.125 * pooled[2]) / 1.875)


def test_reviewkd_matches_fusion_and_hcl_by_hand():
    # two stages: shallow s1 (1, 2, 2, 2), deep s2 (1, 2, 1, 1); mid = 2; identity convolutions and
    # BNs, so x_i = s_i and y_i = r_i; the attention 1x1 convolution has known weights
    generator = torch.Generator().manual_seed(8)
    s1, s2 = torch.randn(1, 2, 2, 2, generator=generator), torch.randn(1, 2, 1, 1, generator=generator)
    t1, t2 = torch.randn(1, 2, 2, 2, generator=generator), torch.randn(1, 2, 1, 1, generator=generator)
    term = ReviewKD({"student_layers": ["s1", "s2"], "teacher_layers": ["t1", "t2"], "mid_channels": 2})
    ctx = ctx_of({"s1": s1, "s2": s2}, {"t1": t1, "t2": t2})
    term.setup(ctx)
    assert term.fusions[1].attention is None and term.fusions[0].attention is not None  # the deepest fuses nothing
    identity_modules(term)
    attention_w = [[0.5, -1.0, 0.3, 0.2], [-0.2, 0.4, 1.0, -0.6]]
    attention_b = [0.1, -0.2]
    with torch.no_grad():
        term.fusions[0].attention.weight.copy_(t(attention_w)[:, :, None, None])
        term.fusions[0].attention.bias.copy_(t(attention_b))
    term.eval()

    x1, r2 = s1.tolist()[0], s2.tolist()[0]
    fused = [[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]
    for y in range(2):
        for z in range(2):
            up = [r2[c][0][0] for c in range(2)]  # nearest upsampling of a 1x1 map
            both = [x1[0][y][z], x1[1][y][z], up[0], up[1]]
            a = [1 / (1 + math.exp(-(sum(w * v for w, v in zip(attention_w[k], both)) + attention_b[k])))
                 for k in range(2)]
            for c in range(2):
                fused[c][y][z] = a[0] * x1[c][y][z] + a[1] * up[c]
    expected = hcl_by_hand([fused], t1.tolist()) + hcl_by_hand(s2.tolist(), t2.tolist())
    assert term(ctx).item() == pytest.approx(expected, rel=1e-5)


def test_reviewkd_is_zero_at_teacher_equal_student_with_identity_fusion():
    generator = torch.Generator().manual_seed(9)
    f1, f2, f3 = (torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 2, 2, generator=generator),
                  torch.randn(2, 3, 1, 1, generator=generator))
    names = ["a", "b", "c"]
    term = ReviewKD({"student_layers": names, "teacher_layers": names, "mid_channels": 3})
    features = dict(zip(names, (f1, f2, f3)))
    term.setup(ctx_of(features, features))
    identity_modules(term)
    with torch.no_grad():  # attention that keeps the stage's own feature: sigmoid(100), sigmoid(-100)
        for fusion in term.fusions[:-1]:
            fusion.attention.weight.zero_()
            fusion.attention.bias.copy_(t([100.0, -100.0]))
    term.eval()
    student = {k: v.clone().requires_grad_(True) for k, v in features.items()}
    value = term(ctx_of(student, features))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-10)
    assert max(v.grad.abs().max().item() for v in student.values()) < 1e-6
    assert term(ctx_of({k: v + 0.1 for k, v in features.items()}, features)).item() > 1e-3


def test_reviewkd_with_unpaired_stages_names_the_layers_and_their_shapes():
    term = ReviewKD({"student_layers": ["s1", "s2"], "teacher_layers": ["t1"]})
    ctx = ctx_of({"s1": torch.zeros(2, 3, 4, 4), "s2": torch.zeros(2, 5, 2, 2)}, {"t1": torch.zeros(2, 6, 4, 4)})
    with pytest.raises(KDEngineError, match=r"reviewkd: 2 student stage\(s\) but 1 teacher stage\(s\)") as error:
        term.setup(ctx)
    assert "student 's2' (2, 5, 2, 2)" in str(error.value) and "teacher 't1' (2, 6, 4, 4)" in str(error.value)


def test_a_feature_that_cannot_be_a_map_names_the_method_the_layer_and_its_shape():
    term = VariationalInformation({"pairs": [["s", "t"]]})
    with pytest.raises(KDEngineError, match=r"vid: student layer 's' of shape \(2, 5, 3\): cannot reshape 5 tokens"):
        term.setup(ctx_of({"s": torch.zeros(2, 5, 3)}, {"t": torch.zeros(2, 3, 2, 2)}))


# ---------------------------------------------------------------------------------------------
# shared: the contract, gradients into the student only, float32 from bf16, the catalog


FEATURES_S = {"a": (4, 3, 4, 4), "b": (4, 5, 2, 2)}
FEATURES_T = {"x": (4, 6, 4, 4), "y": (4, 7, 2, 2)}
CONTRACT = {
    "vid": {"pairs": [["a", "x"], ["b", "y"]]},
    "ofd": {"pairs": [["a", "x"], ["b", "x"]]},
    "ft": {"student_layer": "b", "teacher_layer": "x"},
    "reviewkd": {"student_layers": ["a", "b"], "teacher_layers": ["x", "y"], "mid_channels": 4},
}


def random_ctx(term=None, dtype=torch.float32, seed=0) -> LossContext:
    generator = torch.Generator().manual_seed(seed)
    student = {k: torch.randn(*v, generator=generator).to(dtype) for k, v in FEATURES_S.items()}
    teacher = {k: torch.randn(*v, generator=generator).to(dtype) for k, v in FEATURES_T.items()}
    return LossContext(inputs=None, targets=None, student=torch.randn(4, 3, generator=generator),
                       teacher=torch.randn(4, 3, generator=generator), student_features=student,
                       teacher_features=teacher)


@pytest.mark.parametrize("name", list(CONTRACT))
def test_gradient_reaches_the_student_and_the_terms_modules_but_never_the_teacher(name):
    cls = FEATURE_METHODS[name]
    testing.check_loss_term(cls, CONTRACT[name], random_ctx)  # every parameter of the term gets a gradient
    ctx = random_ctx()
    ctx.student_features = {k: v.requires_grad_(True) for k, v in ctx.student_features.items()}
    ctx.teacher_features = {k: v.requires_grad_(True) for k, v in ctx.teacher_features.items()}
    term = cls(CONTRACT[name])
    with torch.no_grad():
        term.setup(ctx)
    term.train()
    term(ctx).backward()
    assert all(v.grad is None for v in ctx.teacher_features.values())
    tapped = set(term.student_taps())
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for k, v in ctx.student_features.items() if k in tapped)


@pytest.mark.parametrize("name", list(CONTRACT))
def test_bf16_features_give_a_float32_loss(name):
    term = FEATURE_METHODS[name](CONTRACT[name])
    ctx = random_ctx(dtype=torch.bfloat16)
    term.setup(ctx)
    value = term(ctx)
    assert value.dtype == torch.float32 and math.isfinite(value.item())


@pytest.mark.parametrize("name", list(CONTRACT))
def test_forward_before_setup_says_so(name):
    with pytest.raises(KDEngineError, match=f"{name}: setup"):
        FEATURE_METHODS[name](CONTRACT[name])(random_ctx())


def test_the_catalog_lists_each_method_with_its_paper():
    from kdengine.plugins.catalog import get_catalog

    catalog = get_catalog()
    papers = {"vid": "Ahn et al., CVPR 2019", "ofd": "Heo et al., ICCV 2019", "ft": "Kim et al., NeurIPS 2018",
              "reviewkd": "Chen et al., CVPR 2021"}
    for name, paper in papers.items():
        entry = catalog.entry("loss", name)
        assert entry.plugin == "classification" and paper in entry.summary
        assert paper in sys.modules[entry.cls.__module__].__doc__.splitlines()[0]  # the module's docstring too


# ---------------------------------------------------------------------------------------------
# one tiny run each: digits 8x8, mobilenet_v2 x0.25 (features.3: 8x4x4, features.6: 8x2x2 without a
# final ReLU, features.10: 16x1x1), 1 epoch of 2 steps


RUN_LOSSES = {
    "vid": {"pairs": [["features.6", "features.6"], ["features.10", "features.10"]]},
    "ofd": {"pairs": [["features.3", "features.3"], ["features.6", "features.6"]]},
    "ft": {"student_layer": "features.6", "teacher_layer": "features.6"},
    "reviewkd": {"student_layers": ["features.3", "features.6", "features.10"],
                 "teacher_layers": ["features.3", "features.6", "features.10"], "mid_channels": 8},
}


@pytest.mark.parametrize("name", list(RUN_LOSSES))
def test_tiny_run_with_each_method(name, tiny_recipe, tmp_path):
    distilled = distil_once(tiny_recipe, tmp_path, name, RUN_LOSSES[name])
    losses = distilled.history[0].losses
    assert name in losses and math.isfinite(losses[name])
    assert name == "vid" or losses[name] > 0  # VID's Gaussian NLL may be negative
    assert 0.0 <= distilled.best["top1"] <= 1.0


def test_validate_fails_on_reviewkd_stages_that_do_not_pair_up(tiny_recipe, tmp_path, capsys):
    from kdengine.cli import main

    tiny_recipe["loss"] = [{"name": "reviewkd", "weight": 0.5,
                            "params": {"student_layers": ["features.3", "features.6"],
                                       "teacher_layers": ["features.6"], "mid_channels": 8}},
                           {"name": "cross_entropy", "weight": 0.5}]
    recipe = tmp_path / "reviewkd.json"
    recipe.write_text(json.dumps(tiny_recipe))
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "reviewkd: 2 student stage(s) but 1 teacher stage(s)" in err
    assert "student 'features.3' (4, 8, 4, 4)" in err and "teacher 'features.6' (4, 8, 2, 2)" in err
    assert "Traceback" not in err
