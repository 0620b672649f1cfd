import math

import pytest
import torch

from pydantic import ValidationError

from kdengine import DataError, KDEngineError, LossContext
from kdengine_edges.losses import BalancedBCE, SigmoidMSE, WeightedBCE


def ctx(student, targets, teacher=None):
    return LossContext(inputs=torch.zeros(student.shape[0], 3, *student.shape[-2:]),
                       targets=targets, student=student, teacher=teacher)


def test_weighted_bce_matches_its_formula():
    z = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    y = torch.tensor([[[[1.0, 0.0], [1.0, 0.5]]]])
    s = torch.sigmoid(z)
    w = 10.0
    expected = -(w * y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()
    got = WeightedBCE({"pos_weight": w})(ctx(z, y))
    assert torch.allclose(got, expected, atol=1e-6)
    # z = 0 on an edge pixel alone: -10 * log(0.5)
    one = WeightedBCE({"pos_weight": w})(ctx(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)))
    assert math.isclose(float(one), 10 * math.log(2), rel_tol=1e-6)


def test_weighted_bce_ignores_padding():
    z = torch.zeros(1, 1, 1, 2)
    y = torch.tensor([[[[1.0, -1.0]]]])
    got = WeightedBCE({"pos_weight": 2.0})(ctx(z, y))
    assert math.isclose(float(got), 2 * math.log(2), rel_tol=1e-6)


def test_sigmoid_mse_matches_its_formula_and_needs_the_teacher():
    zs = torch.tensor([[[[0.0, 1.0]]]])
    zt = torch.tensor([[[[2.0, -1.0]]]])
    expected = ((torch.sigmoid(zs) - torch.sigmoid(zt)) ** 2).mean()
    term = SigmoidMSE()
    assert SigmoidMSE.needs_teacher and not WeightedBCE.needs_teacher
    assert torch.allclose(term(ctx(zs, torch.zeros_like(zs), zt)), expected)
    assert float(term(ctx(zt, torch.zeros_like(zt), zt))) == 0.0
    with pytest.raises(KDEngineError, match="sigmoid_mse needs the teacher's output"):
        term(ctx(zs, torch.zeros_like(zs), None))


def test_balanced_bce_matches_hed():
    z = torch.tensor([[[[0.5, -1.0, 2.0, 0.0]]]])
    y = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    s = torch.sigmoid(z)
    beta = 3 / 4  # |Y-| / |Y|
    total = -(beta * torch.log(s[0, 0, 0, 0]) + (1 - beta) * torch.log(1 - s[0, 0, 0, 1:]).sum())
    got = BalancedBCE()(ctx(z, y))
    assert torch.allclose(got, total / 4, atol=1e-6)


def test_balanced_bce_ignores_uncertain_soft_pixels():
    z = torch.tensor([[[[0.5, -1.0, 3.0]]]])
    y = torch.tensor([[[[0.8, 0.0, 0.2]]]])  # 0.2 < eta: ignored
    s = torch.sigmoid(z)
    beta = 1 / 2
    expected = -(beta * torch.log(s[0, 0, 0, 0]) + (1 - beta) * torch.log(1 - s[0, 0, 0, 1])) / 2
    assert torch.allclose(BalancedBCE({"eta": 0.5})(ctx(z, y)), expected, atol=1e-6)


@pytest.mark.parametrize("term", [WeightedBCE(), SigmoidMSE(), BalancedBCE()])
def test_gradients_reach_the_student(term):
    torch.manual_seed(0)
    student = torch.nn.Conv2d(3, 1, 3, padding=1)
    inputs = torch.rand(2, 3, 8, 8)
    targets = (torch.rand(2, 1, 8, 8) > 0.8).float()
    teacher = torch.randn(2, 1, 8, 8)
    loss = term(LossContext(inputs, targets, student(inputs), teacher))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0


def test_params_are_validated():
    with pytest.raises(ValidationError, match="pos_weight"):
        WeightedBCE({"pos_weight": 0.0})
    with pytest.raises(ValidationError, match="eta"):
        BalancedBCE({"eta": 1.5})
    with pytest.raises(ValidationError, match="alpha"):
        SigmoidMSE({"alpha": 0.5})


def test_shape_mismatch_is_reported():
    with pytest.raises(DataError, match="does not match"):
        WeightedBCE()(ctx(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)))
