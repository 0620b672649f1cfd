"""kdengine-dkd's own tests: DKD against its formula by hand, and kdengine's contract checks."""

from __future__ import annotations

import math

import pytest
import torch

from kdengine import LossContext, testing
from kdengine_dkd import DecoupledKD

STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.5]]
TEACHER = [[2.0, 1.0, 0.0, 0.5], [1.0, 0.0, 2.0, -2.0]]
LABELS = [1, 2]


def _softmax(values, t):
    e = [math.exp(v / t) for v in values]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def dkd_by_hand(alpha, beta, t):
    total = 0.0
    for zs, zt, y in zip(STUDENT, TEACHER, LABELS):
        ps, pt = _softmax(zs, t), _softmax(zt, t)
        tckd = _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        nts = _softmax([v for k, v in enumerate(zs) if k != y], t)
        ntt = _softmax([v for k, v in enumerate(zt) if k != y], t)
        total += alpha * tckd + beta * _kl(ntt, nts)
    return t * t * total / len(LABELS)


def _ctx(targets=None):
    return LossContext(None, torch.tensor(LABELS) if targets is None else targets,
                       torch.tensor(STUDENT), torch.tensor(TEACHER))


@pytest.mark.parametrize("alpha, beta, t", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (1.0, 0.0, 2.0)])
def test_dkd_matches_the_formula_by_hand(alpha, beta, t):
    value = DecoupledKD({"alpha": alpha, "beta": beta, "temperature": t})(_ctx())
    assert value.item() == pytest.approx(dkd_by_hand(alpha, beta, t), rel=1e-5)


def test_hintons_kd_is_tckd_plus_nckd_weighted_by_the_teachers_non_target_mass():
    # The paper's Eq. 4: KD = TCKD + (1 - p_y^t) * NCKD, checked row by row at T = 1.
    for zs, zt, y in zip(STUDENT, TEACHER, LABELS):
        weight = 1 - _softmax(zt, 1.0)[y]
        ctx = LossContext(None, torch.tensor([y]), torch.tensor([zs]), torch.tensor([zt]))
        dkd = DecoupledKD({"alpha": 1.0, "beta": weight, "temperature": 1.0})(ctx)
        assert dkd.item() == pytest.approx(_kl(_softmax(zt, 1.0), _softmax(zs, 1.0)), rel=1e-5)


def test_soft_targets_use_their_most_probable_class():
    soft = torch.nn.functional.one_hot(torch.tensor(LABELS), 4).float() * 0.7 + 0.075
    assert DecoupledKD()(_ctx(soft)).item() == pytest.approx(DecoupledKD()(_ctx()).item())


def test_contract():
    testing.check_params(DecoupledKD, {"alpha": 1.0, "beta": 8.0, "temperature": 4.0},
                         [{"temperature": 0}, {"alpha": -1}, {"beta": "lots"}])
    testing.check_loss_term(DecoupledKD, {}, testing.logits_context)


def test_registered_in_the_catalog_as_dkd_dkd():
    entry = testing.registered("loss", "dkd.dkd")
    assert entry.cls is DecoupledKD and entry.plugin == "dkd"
