"""The logit-based KD methods of the classification plugin (DKD, MLKD, CTKD, NKD) and logit
standardization: each against its paper's formula written as plain loops on hand-sized tensors, its
minimum at teacher = student, gradients into the student only, and one tiny run each."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdengine import LossContext
from kdengine import testing
from kdengine_classification.kd_methods.ctkd import CurriculumTemperatureKD, cosine_lambda
from kdengine_classification.kd_methods.dkd import DecoupledKD
from kdengine_classification.kd_methods.logit_methods import LOGIT_METHODS
from kdengine_classification.kd_methods.mlkd import MultiLevelKD
from kdengine_classification.kd_methods.nkd import NormalizedKD, nkd_parts
from kdengine_classification.kd_methods.standardize import standardize
from kdengine_classification.losses import KLDivergence, hinton_kd
from method_runs import distil_once

pytestmark = pytest.mark.usefixtures("one_thread")

ZS = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [0.3, 0.2, 0.1, 1.5]]
ZT = [[2.0, 1.0, 0.0, -0.5], [1.0, 0.0, 2.0, 1.0], [0.0, 0.5, 1.0, 3.0]]
LABELS = [1, 2, 0]


def ctx_of(zs, zt, targets=None) -> LossContext:
    s = zs if isinstance(zs, torch.Tensor) else torch.tensor(zs)
    t = zt if isinstance(zt, torch.Tensor) else torch.tensor(zt)
    y = targets if isinstance(targets, torch.Tensor) or targets is None else torch.tensor(targets)
    return LossContext(inputs=None, targets=y, student=s, teacher=t)


# ---------------------------------------------------------------------------------------------
# plain-python references


def softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def z_score(row):
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (std + 1e-7) for v in row]


def hinton_by_hand(zs, zt, t, standardized=False):
    if standardized:
        zs, zt = [z_score(r) for r in zs], [z_score(r) for r in zt]
    return t * t * sum(kl(softmax(b, t), softmax(a, t)) for a, b in zip(zs, zt)) / len(zs)


def dkd_by_hand(zs, zt, labels, alpha, beta, t, standardized=False):
    if standardized:
        zs, zt = [z_score(r) for r in zs], [z_score(r) for r in zt]
    total = 0.0
    for s_row, t_row, y in zip(zs, zt, labels):
        ps, pt = softmax(s_row, t), softmax(t_row, t)
        tckd = kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        others = [k for k in range(len(s_row)) if k != y]
        hat_s = softmax([s_row[k] for k in others], t)
        hat_t = softmax([t_row[k] for k in others], t)
        total += alpha * tckd + beta * kl(hat_t, hat_s)
    return t * t * total / len(zs)


def mlkd_by_hand(zs, zt, temperatures):
    b, k = len(zs), len(zs[0])
    total = 0.0
    for t in temperatures:
        ps, pt = [softmax(r, t) for r in zs], [softmax(r, t) for r in zt]
        instance = t * t * sum(kl(q, p) for p, q in zip(ps, pt)) / b
        batch = 0.0
        for i in range(b):
            for j in range(b):
                g_t = sum(pt[i][c] * pt[j][c] for c in range(k))
                g_s = sum(ps[i][c] * ps[j][c] for c in range(k))
                batch += (g_t - g_s) ** 2
        klass = 0.0
        for c in range(k):
            for d in range(k):
                m_t = sum(pt[i][c] * pt[i][d] for i in range(b))
                m_s = sum(ps[i][c] * ps[i][d] for i in range(b))
                klass += (m_t - m_s) ** 2
        total += instance + batch / b + klass / k
    return total


def nkd_by_hand(zs, zt, labels, t, gamma):
    target = non_target = 0.0
    for s_row, t_row, y in zip(zs, zt, labels):
        ps, pt = softmax(s_row), softmax(t_row)
        target += -pt[y] * math.log(ps[y])
        ps_t, pt_t = softmax(s_row, t), softmax(t_row, t)
        others = [k for k in range(len(s_row)) if k != y]
        # the non-target probabilities divided by 1 - p_y
        n_s = [ps_t[k] / (1 - ps_t[y]) for k in others]
        n_t = [pt_t[k] / (1 - pt_t[y]) for k in others]
        non_target += kl(n_t, n_s)
    b = len(zs)
    return target / b, non_target / b, target / b + gamma * t * t * non_target / b


# ---------------------------------------------------------------------------------------------
# logit standardization and kl_div


def test_standardize_gives_each_row_mean_zero_and_unit_std():
    z = torch.tensor(ZS) * 3 + 1
    out = standardize(z)
    assert torch.allclose(out.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(out.std(dim=1), torch.ones(3), atol=1e-5)
    assert out[0].tolist() == pytest.approx(z_score((torch.tensor(ZS[0]) * 3 + 1).tolist()), rel=1e-5)


def test_kl_div_without_standardize_is_exactly_the_previous_loss():
    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    for temperature in (1.0, 4.0):
        previous = F.kl_div(F.log_softmax(s.float() / temperature, dim=1), F.log_softmax(t.float() / temperature, dim=1),
                            reduction="batchmean", log_target=True) * (temperature * temperature)
        assert KLDivergence.Params().standardize is False
        assert torch.equal(KLDivergence({"temperature": temperature})(ctx_of(s, t)), previous)
        assert torch.equal(KLDivergence({"temperature": temperature, "standardize": False})(ctx_of(s, t)), previous)
        assert torch.equal(hinton_kd(s, t, temperature), previous)


def test_kl_div_standardized_matches_the_formula_by_hand():
    term = KLDivergence({"temperature": 2.0, "standardize": True})
    assert term(ctx_of(ZS, ZT)).item() == pytest.approx(hinton_by_hand(ZS, ZT, 2.0, standardized=True), rel=1e-5)
    assert KLDivergence({"temperature": 2.0})(ctx_of(ZS, ZT)).item() == pytest.approx(hinton_by_hand(ZS, ZT, 2.0), rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_standardized_kl_div_is_invariant_to_shifting_and_scaling_student_rows(seed):
    generator = torch.Generator().manual_seed(seed)
    s, t = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator) * 3
    scale = torch.rand(5, 1, generator=generator) * 10 + 0.05   # a positive factor per row
    shift = torch.randn(5, 1, generator=generator) * 20
    term = KLDivergence({"temperature": 2.0, "standardize": True})
    reference = term(ctx_of(s, t)).item()
    assert term(ctx_of(s * scale + shift, t)).item() == pytest.approx(reference, rel=1e-4, abs=1e-6)
    # the teacher's rows too; plain KD is not invariant
    assert term(ctx_of(s, t * scale + shift)).item() == pytest.approx(reference, rel=1e-4, abs=1e-6)
    plain = KLDivergence({"temperature": 2.0})
    assert plain(ctx_of(s * scale + shift, t)).item() != pytest.approx(plain(ctx_of(s, t)).item(), rel=1e-3)


def test_standardized_kl_div_is_zero_for_a_rescaled_teacher():
    t = torch.tensor(ZT)
    s = (t * 0.3 - 2.0).requires_grad_(True)
    value = KLDivergence({"temperature": 2.0, "standardize": True})(ctx_of(s, t))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert s.grad.abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------------
# DKD


def test_dkd_matches_the_formula_by_hand():
    for alpha, beta, t in [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)]:
        term = DecoupledKD({"alpha": alpha, "beta": beta, "temperature": t})
        value = term(ctx_of(ZS, ZT, LABELS)).item()
        assert value == pytest.approx(dkd_by_hand(ZS, ZT, LABELS, alpha, beta, t), rel=1e-5)


def test_dkd_with_alpha_equal_beta_and_a_uniform_teacher_tail_relates_to_kd():
    # with alpha = beta = 1 and NCKD weighted by (1 - p_y^t) it would be KD; check the decomposition
    zs, zt = ZS, ZT
    kd = hinton_by_hand(zs, zt, 2.0)
    tckd = dkd_by_hand(zs, zt, LABELS, 1.0, 0.0, 2.0)
    weighted = 0.0
    for s_row, t_row, y in zip(zs, zt, LABELS):
        pt = softmax(t_row, 2.0)
        weighted += (1 - pt[y]) * dkd_by_hand([s_row], [t_row], [y], 0.0, 1.0, 2.0)
    assert tckd + weighted / len(zs) == pytest.approx(kd, rel=1e-9)
    assert DecoupledKD({"alpha": 1.0, "beta": 0.0, "temperature": 2.0})(ctx_of(zs, zt, LABELS)).item() == \
        pytest.approx(tckd, rel=1e-5)


def test_dkd_reads_soft_targets_by_their_most_probable_class():
    soft = F.one_hot(torch.tensor(LABELS), 4).float() * 0.7 + 0.075
    term = DecoupledKD()
    assert term(ctx_of(ZS, ZT, soft)).item() == pytest.approx(term(ctx_of(ZS, ZT, LABELS)).item(), rel=1e-6)


def test_dkd_standardized_matches_the_formula_and_is_invariant_to_row_scaling():
    term = DecoupledKD({"temperature": 2.0, "standardize": True})
    value = term(ctx_of(ZS, ZT, LABELS)).item()
    assert value == pytest.approx(dkd_by_hand(ZS, ZT, LABELS, 1.0, 8.0, 2.0, standardized=True), rel=1e-5)
    s = torch.tensor(ZS) * torch.tensor([[2.0], [0.5], [7.0]]) + torch.tensor([[1.0], [-3.0], [0.0]])
    assert term(ctx_of(s, ZT, LABELS)).item() == pytest.approx(value, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# MLKD


def test_mlkd_matches_the_formula_by_hand():
    assert MultiLevelKD.per_sample is False
    value = MultiLevelKD()(ctx_of(ZS, ZT)).item()
    assert value == pytest.approx(mlkd_by_hand(ZS, ZT, [2, 3, 4, 5, 6]), rel=1e-5)
    one = MultiLevelKD({"temperatures": [3.0]})(ctx_of(ZS, ZT)).item()
    assert one == pytest.approx(mlkd_by_hand(ZS, ZT, [3.0]), rel=1e-5)


def test_mlkd_level_weights_select_the_levels():
    only_instance = MultiLevelKD({"temperatures": [4.0], "batch_weight": 0.0, "class_weight": 0.0})
    assert only_instance(ctx_of(ZS, ZT)).item() == pytest.approx(hinton_by_hand(ZS, ZT, 4.0), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# NKD


def test_nkd_matches_the_formula_by_hand():
    for t, gamma in [(1.0, 1.5), (2.0, 0.5)]:
        target, non_target, total = nkd_by_hand(ZS, ZT, LABELS, t, gamma)
        term = NormalizedKD({"temperature": t, "gamma": gamma})
        assert term(ctx_of(ZS, ZT, LABELS)).item() == pytest.approx(total, rel=1e-5)
        parts = nkd_parts(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(LABELS), t)
        assert parts[0].item() == pytest.approx(target, rel=1e-5)
        assert parts[1].item() == pytest.approx(non_target, rel=1e-5)


def test_nkd_at_teacher_equal_student_keeps_only_the_target_part():
    z = torch.tensor(ZT)
    s = z.clone().requires_grad_(True)
    target, non_target = nkd_parts(s, z, torch.tensor(LABELS), 2.0)
    assert non_target.item() == pytest.approx(0.0, abs=1e-7)
    expected = -sum(softmax(r)[y] * math.log(softmax(r)[y]) for r, y in zip(ZT, LABELS)) / 3
    assert target.item() == pytest.approx(expected, rel=1e-5)  # -t_y log t_y: not zero
    non_target.backward()
    assert s.grad.abs().max().item() < 1e-6   # the non-target part is at its minimum
    total = NormalizedKD()(ctx_of(z, z, LABELS)).item()
    assert total == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# CTKD


def test_ctkd_starts_at_the_authors_temperature_and_matches_kd_by_hand_there():
    term = CurriculumTemperatureKD()
    t0 = 1 + 20 / (1 + math.exp(-1.0))
    assert term.temperature == pytest.approx(t0, rel=1e-6)
    assert [n for n, _ in term.named_parameters()] == ["theta"]
    term.eval()
    # float32 at T ~ 15.6: the KL is a difference of nearly equal terms
    assert term(ctx_of(ZS, ZT)).item() == pytest.approx(hinton_by_hand(ZS, ZT, t0), rel=1e-4)
    other = CurriculumTemperatureKD({"init_temperature": 4.0, "t_min": 1.0, "t_max": 10.0})
    assert other.temperature == pytest.approx(4.0, rel=1e-6)
    assert other(ctx_of(ZS, ZT)).item() == pytest.approx(hinton_by_hand(ZS, ZT, 4.0), rel=1e-5)


def test_ctkd_params_are_checked():
    testing.check_params(CurriculumTemperatureKD, valid={"t_min": 2.0, "t_max": 8.0, "init_temperature": 3.0},
                         invalid=[{"t_min": 5.0, "t_max": 2.0}, {"init_temperature": 30.0},
                                  {"t_min": 1.0, "init_temperature": 1.0}, {"ramp_steps": 0}])


def test_ctkd_lambda_follows_the_cosine_ramp_of_counted_training_steps():
    term = CurriculumTemperatureKD({"ramp_steps": 4})
    ctx = ctx_of(ZS, ZT)
    term.eval()
    term(ctx)
    assert int(term.steps) == 0 and float(term.current_lambda()) == 0.0  # evaluation does not count
    term.train()
    with torch.no_grad():
        term(ctx)
    assert int(term.steps) == 0  # nor does a forward without gradients
    expected = [0.5 * (1 - math.cos(math.pi * n / 4)) for n in (1, 2, 3, 4, 4, 4)]
    for n, lam in enumerate(expected, start=1):
        term(ctx)
        assert int(term.steps) == n
        assert float(term.current_lambda()) == pytest.approx(lam, abs=1e-6)
        assert cosine_lambda(n, 4) == pytest.approx(lam, abs=1e-12)
    assert "steps" in term.state_dict()  # saved with the run and restored on resume


def test_ctkd_temperature_gradient_is_reversed_and_the_students_is_ordinary():
    term = CurriculumTemperatureKD({"ramp_steps": 4, "init_temperature": 3.0})
    term.train()
    term(ctx_of(ZS, ZT))  # the first counted step
    lam = 0.5  # the next call is step 2 of 4: lambda = (1 - cos(pi / 2)) / 2
    s = torch.tensor(ZS, requires_grad=True)
    teacher = torch.tensor(ZT, requires_grad=True)
    value = term(ctx_of(s, teacher))
    value.backward()
    assert teacher.grad is None

    # the same loss without the reversal, at the same temperature
    theta = term.theta.detach().clone().requires_grad_(True)
    s_plain = torch.tensor(ZS, requires_grad=True)
    plain = hinton_kd(s_plain, torch.tensor(ZT), 1.0 + 20.0 * torch.sigmoid(theta))
    plain.backward()
    assert value.item() == pytest.approx(plain.item(), rel=1e-6)
    assert torch.allclose(s.grad, s_plain.grad)                       # the student descends L
    assert term.theta.grad.item() == pytest.approx(-lam * theta.grad.item(), rel=1e-5)  # T ascends it
    assert term.theta.grad.item() != 0.0

    # an SGD step on the temperature alone raises the KD loss
    before = value.item()
    with torch.no_grad():
        term.theta -= 1.0 * term.theta.grad
    term.eval()
    assert term(ctx_of(ZS, ZT)).item() > before


def test_ctkd_is_zero_at_teacher_equal_student():
    term = CurriculumTemperatureKD()
    term.train()
    s = torch.tensor(ZT, requires_grad=True)
    value = term(ctx_of(s, torch.tensor(ZT)))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert s.grad.abs().max().item() < 1e-6
    assert abs(term.theta.grad.item()) < 1e-6


# ---------------------------------------------------------------------------------------------
# shared: minimum at teacher = student, gradients into the student only, the catalog


@pytest.mark.parametrize("name,params", [("dkd", {}), ("dkd", {"standardize": True}), ("mlkd", {}), ("ctkd", {})])
def test_minimum_is_zero_with_zero_gradient_at_teacher_equal_student(name, params):
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(3)) * 2
    s = z.clone().requires_grad_(True)
    term = LOGIT_METHODS[name](params)
    term.train()
    value = term(ctx_of(s, z, torch.tensor([0, 1, 2, 3, 4, 0])))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert s.grad.abs().max().item() < 1e-6
    # and positive elsewhere
    assert term(ctx_of(z.flip(1), z, torch.tensor([0, 1, 2, 3, 4, 0]))).item() > 1e-3


CONTRACT = {
    "dkd": {},
    "dkd_standardized": {"standardize": True, "temperature": 2.0},
    "mlkd": {"temperatures": [2.0, 4.0]},
    "ctkd": {"ramp_steps": 10},
    "nkd": {},
}


@pytest.mark.parametrize("key", list(CONTRACT))
def test_gradient_reaches_the_student_only(key):
    cls = LOGIT_METHODS[key.split("_")[0]]
    testing.check_loss_term(cls, CONTRACT[key], lambda term: testing.logits_context(term, batch=6, classes=7))
    # a teacher that requires grad gets none from the term
    ctx = testing.logits_context(cls(CONTRACT[key]), batch=6, classes=7)
    ctx.student.requires_grad_(True)
    ctx.teacher.requires_grad_(True)
    term = cls(CONTRACT[key])
    term.train()
    term(ctx).backward()
    assert ctx.teacher.grad is None
    assert ctx.student.grad is not None and ctx.student.grad.abs().sum() > 0


@pytest.mark.parametrize("key", ["dkd", "nkd"])
def test_soft_targets_work(key):
    ctx = testing.logits_context(LOGIT_METHODS[key](), batch=4, classes=5)
    hard = LOGIT_METHODS[key]()(ctx).item()
    ctx.targets = F.one_hot(ctx.targets, 5).float() * 0.6 + 0.08
    assert LOGIT_METHODS[key]()(ctx).item() == pytest.approx(hard, rel=1e-6)


def test_the_catalog_lists_each_method_with_its_paper():
    from kdengine.plugins.catalog import get_catalog

    catalog = get_catalog()
    papers = {"dkd": "Zhao et al., CVPR 2022", "mlkd": "Jin et al., CVPR 2023", "ctkd": "Li et al., AAAI 2023",
              "nkd": "Yang et al., ICCV 2023"}
    for name, paper in papers.items():
        entry = catalog.entry("loss", name)
        assert entry.plugin == "classification" and paper in entry.summary


# ---------------------------------------------------------------------------------------------
# one tiny run each: digits, mobilenet_v2 x0.25, 1 epoch of 2 steps


RUN_LOSSES = {
    "dkd": {"temperature": 4.0},
    "mlkd": {"temperatures": [2.0, 4.0]},
    "ctkd": {"ramp_steps": 2},
    "nkd": {},
    "kl_div": {"temperature": 2.0, "standardize": True},
}


@pytest.mark.parametrize("name", list(RUN_LOSSES))
def test_tiny_run_with_each_method(name, tiny_recipe, tmp_path):
    distilled = distil_once(tiny_recipe, tmp_path, name, RUN_LOSSES[name])
    losses = distilled.history[0].losses
    assert name in losses and math.isfinite(losses[name]) and losses[name] > 0
    assert 0.0 <= distilled.best["top1"] <= 1.0
