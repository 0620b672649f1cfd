"""The relation-based KD methods of the classification plugin (RKD, PKT, SP, NST): each against its
paper's formula written as plain loops on hand-sized tensors, its minimum at teacher = student,
gradients into the student only, its catalog entry, a tap naming no layer failing in validate, and
one tiny run each."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdengine import DataInfo, KDEngineError, LossContext
from kdengine import testing
from kdengine_classification.kd_methods.nst import NeuronSelectivityTransfer
from kdengine_classification.kd_methods.pkt import ProbabilisticKT
from kdengine_classification.kd_methods.relation_methods import RELATION_METHODS
from kdengine_classification.kd_methods.rkd import RelationalKD, rkd_parts
from kdengine_classification.kd_methods.sp import SimilarityPreserving
from kdengine_classification.models import TorchvisionModel
from method_runs import distil_once

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = DataInfo(task="classification", in_channels=1, num_classes=10)

# Five samples: student embeddings in 3-d, teacher embeddings in 2-d (the sizes may differ).
S = [[1.0, 0.0, 2.0], [0.5, 1.5, -1.0], [-2.0, 0.3, 0.0], [0.0, -1.0, 1.0], [3.0, 2.0, 0.5]]
T = [[0.0, 1.0], [2.0, 0.0], [-1.0, -1.0], [4.0, 3.0], [0.2, -0.5]]


def ctx_of(student: dict, teacher: dict, logits_s=None, logits_t=None) -> LossContext:
    return LossContext(inputs=None, targets=None, student=logits_s, teacher=logits_t,
                       student_features=student, teacher_features=teacher)


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------------------------------------
# plain-python references


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def minus(a, b):
    return [x - y for x, y in zip(a, b)]


def huber(x):
    return 0.5 * x * x if abs(x) <= 1 else abs(x) - 0.5


def rkd_by_hand(s, t):
    """(L_D, L_A, how many Huber arguments exceeded 1) over distinct pairs and triplets."""
    b = len(s)
    pairs = [(i, j) for i in range(b) for j in range(b) if i != j]
    triplets = [(i, j, k) for i in range(b) for j in range(b) for k in range(b) if len({i, j, k}) == 3]

    def potentials(x):
        d = {p: norm(minus(x[p[0]], x[p[1]])) for p in pairs}
        mu = sum(d.values()) / len(d)
        return {p: v / mu for p, v in d.items()}

    def cosine(x, i, j, k):  # the angle at x_j
        a, c = minus(x[i], x[j]), minus(x[k], x[j])
        return dot(a, c) / (norm(a) * norm(c))

    ps, pt = potentials(s), potentials(t)
    diffs_d = [ps[p] - pt[p] for p in pairs]
    diffs_a = [cosine(s, *tr) - cosine(t, *tr) for tr in triplets]
    large = sum(abs(x) > 1 for x in diffs_d + diffs_a)
    return sum(map(huber, diffs_d)) / len(pairs), sum(map(huber, diffs_a)) / len(triplets), large


def pkt_by_hand(s, t, eps=1e-7):
    b = len(s)

    def probabilities(x):
        x = [[v / norm(row) for v in row] for row in x]
        kernel = [[(dot(x[i], x[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[kernel[i][j] / sum(kernel[i][k] for k in range(b) if k != i) if j != i else 0.0
                 for j in range(b)] for i in range(b)]

    p_s, p_t = probabilities(s), probabilities(t)
    total = sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
                for i in range(b) for j in range(b) if j != i)
    return total / b


def flat(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(x.shape[0], -1).tolist()


def sp_by_hand(pairs):
    total = 0.0
    for a_s, a_t in pairs:
        q_s, q_t = flat(a_s), flat(a_t)
        b = len(q_s)

        def g_tilde(q):
            g = [[dot(q[i], q[j]) for j in range(b)] for i in range(b)]
            return [[v / norm(row) for v in row] for row in g]

        g_s, g_t = g_tilde(q_s), g_tilde(q_t)
        total += sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2
    return total


def nst_by_hand(a_s: torch.Tensor, a_t: torch.Tensor):
    """Per-sample MMD^2 with k(x, y) = (x.y)^2 over the normalised channel maps, batch-averaged."""
    total = 0.0
    for fs, ft in zip(a_s, a_t):
        fs = [[v / norm(c) for v in c] for c in fs.reshape(fs.shape[0], -1).tolist()]
        ft = [[v / norm(c) for v in c] for c in ft.reshape(ft.shape[0], -1).tolist()]
        cs, ct = len(fs), len(ft)
        k = lambda x, y: dot(x, y) ** 2  # noqa: E731
        tt = sum(k(x, y) for x in ft for y in ft) / ct**2
        ss = sum(k(x, y) for x in fs for y in fs) / cs**2
        st = sum(k(x, y) for x in ft for y in fs) / (ct * cs)
        total += tt + ss - 2 * st
    return total / len(a_s)


# ---------------------------------------------------------------------------------------------
# each against its formula


def test_rkd_matches_the_formula_by_hand():
    distance, angle, large = rkd_by_hand(S, T)
    assert large > 0  # both branches of the Huber loss are exercised
    parts = rkd_parts(torch.tensor(S), torch.tensor(T))
    assert parts[0].item() == pytest.approx(distance, rel=1e-5)
    assert parts[1].item() == pytest.approx(angle, rel=1e-5)
    term = RelationalKD({"student_layer": "s", "teacher_layer": "t"})
    value = term(ctx_of({"s": torch.tensor(S)}, {"t": torch.tensor(T)})).item()
    assert value == pytest.approx(25 * distance + 50 * angle, rel=1e-5)
    weighted = RelationalKD({"student_layer": "s", "teacher_layer": "t", "distance_weight": 1.0, "angle_weight": 0.0})
    assert weighted(ctx_of({"s": torch.tensor(S)}, {"t": torch.tensor(T)})).item() == pytest.approx(distance, rel=1e-5)


def test_rkd_pools_feature_maps_and_defaults_to_the_logits():
    maps_s, maps_t = rand(5, 3, 2, 2, seed=1), rand(5, 2, 3, 3, seed=2)
    distance, angle, _ = rkd_by_hand(maps_s.mean(dim=(2, 3)).tolist(), maps_t.mean(dim=(2, 3)).tolist())
    term = RelationalKD({"student_layer": "s", "teacher_layer": "t"})
    assert term.student_taps() == ["s"] and term.teacher_taps() == ["t"]
    assert term(ctx_of({"s": maps_s}, {"t": maps_t})).item() == pytest.approx(25 * distance + 50 * angle, rel=1e-5)
    on_logits = RelationalKD()
    assert on_logits.student_taps() == [] and on_logits.teacher_taps() == []
    distance, angle, _ = rkd_by_hand(S, T)
    assert on_logits(ctx_of({}, {}, torch.tensor(S), torch.tensor(T))).item() == \
        pytest.approx(25 * distance + 50 * angle, rel=1e-5)


def test_rkd_on_batches_too_small_to_relate():
    two = RelationalKD()(ctx_of({}, {}, torch.tensor(S[:2]), torch.tensor(T[:2])))
    assert two.item() == pytest.approx(0.0, abs=1e-6)  # one distance, normalised to 1 on both sides
    s = torch.tensor(S[:1], requires_grad=True)
    one = RelationalKD()(ctx_of({}, {}, s, torch.tensor(T[:1])))
    one.backward()
    assert one.item() == 0.0 and s.grad.abs().sum() == 0


def test_pkt_matches_the_formula_by_hand():
    term = ProbabilisticKT({"student_layer": "s", "teacher_layer": "t"})
    assert term(ctx_of({"s": torch.tensor(S)}, {"t": torch.tensor(T)})).item() == pytest.approx(pkt_by_hand(S, T), rel=1e-5)
    maps_s, maps_t = rand(5, 3, 2, 2, seed=3), rand(5, 4, 1, 1, seed=4)
    expected = pkt_by_hand(maps_s.mean(dim=(2, 3)).tolist(), maps_t.mean(dim=(2, 3)).tolist())
    assert term(ctx_of({"s": maps_s}, {"t": maps_t})).item() == pytest.approx(expected, rel=1e-5)
    assert ProbabilisticKT()(ctx_of({}, {}, torch.tensor(S), torch.tensor(T))).item() == \
        pytest.approx(pkt_by_hand(S, T), rel=1e-5)


def test_sp_matches_the_formula_by_hand_and_sums_its_pairs():
    a_s, a_t = rand(4, 2, 2, 2, seed=5), rand(4, 3, 3, 3, seed=6)   # any sizes: G is B x B
    b_s, b_t = rand(4, 5, seed=7), rand(4, 9, 4, seed=8)            # vectors and tokens too
    one = SimilarityPreserving({"pairs": [["a", "x"]]})
    ctx = ctx_of({"a": a_s, "b": b_s}, {"x": a_t, "y": b_t})
    assert one(ctx).item() == pytest.approx(sp_by_hand([(a_s, a_t)]), rel=1e-5)
    both = SimilarityPreserving({"pairs": [["a", "x"], ["b", "y"]]})
    assert both.student_taps() == ["a", "b"] and both.teacher_taps() == ["x", "y"]
    assert both(ctx).item() == pytest.approx(sp_by_hand([(a_s, a_t), (b_s, b_t)]), rel=1e-5)


def test_nst_matches_the_formula_by_hand():
    a_s, a_t = rand(3, 2, 3, 3, seed=9), rand(3, 4, 3, 3, seed=10)  # channels may differ
    term = NeuronSelectivityTransfer({"student_layer": "s", "teacher_layer": "t"})
    assert term(ctx_of({"s": a_s}, {"t": a_t})).item() == pytest.approx(nst_by_hand(a_s, a_t), rel=1e-5)


def test_nst_brings_the_student_to_the_teachers_grid():
    a_s, a_t = rand(3, 2, 4, 4, seed=11), rand(3, 4, 2, 2, seed=12)
    term = NeuronSelectivityTransfer({"student_layer": "s", "teacher_layer": "t"})
    pooled = F.avg_pool2d(a_s, 2)  # a larger student grid is average-pooled
    assert term(ctx_of({"s": a_s}, {"t": a_t})).item() == pytest.approx(nst_by_hand(pooled, a_t), rel=1e-5)
    small = rand(3, 2, 1, 1, seed=13)  # a smaller one is interpolated: a 1x1 map becomes constant
    assert term(ctx_of({"s": small}, {"t": a_t})).item() == \
        pytest.approx(nst_by_hand(small.expand(3, 2, 2, 2), a_t), rel=1e-5)
    tokens = a_s.flatten(2).transpose(1, 2)  # (B, 16, C) tokens read as a 4x4 map
    assert term(ctx_of({"s": tokens}, {"t": a_t})).item() == pytest.approx(nst_by_hand(pooled, a_t), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# shared: minimum at teacher = student, gradients into the student only, params, the catalog


CASES = {
    "rkd": ({"student_layer": "s", "teacher_layer": "t"}, {"s": rand(6, 4, 2, 2, seed=20)}, {"t": rand(6, 8, 1, 1, seed=21)}),
    "pkt": ({"student_layer": "s", "teacher_layer": "t"}, {"s": rand(6, 5, seed=22)}, {"t": rand(6, 3, 2, 2, seed=23)}),
    "sp": ({"pairs": [["s", "t"], ["s2", "t2"]]}, {"s": rand(6, 3, 2, 2, seed=24), "s2": rand(6, 7, seed=25)},
           {"t": rand(6, 5, 4, 4, seed=26), "t2": rand(6, 2, 3, 3, seed=27)}),
    "nst": ({"student_layer": "s", "teacher_layer": "t"}, {"s": rand(6, 3, 4, 4, seed=28)},
            {"t": rand(6, 5, 2, 2, seed=29)}),
}


def test_the_loss_is_float32_for_a_bf16_student():
    for name, (params, student, teacher) in CASES.items():
        term = RELATION_METHODS[name](params)
        exact = term(ctx_of(student, teacher))
        half = term(ctx_of({k: v.bfloat16() for k, v in student.items()}, teacher))
        assert half.dtype == torch.float32, name
        assert half.item() == pytest.approx(exact.item(), rel=0.05, abs=1e-3), name


@pytest.mark.parametrize("name", list(CASES))
def test_minimum_is_zero_with_zero_gradient_at_teacher_equal_student(name):
    params, student, teacher = CASES[name]
    # the teacher's features at the student's layers: the same tensors on both sides
    same_teacher = {t: student[s].clone() for s, t in zip(RELATION_METHODS[name](params).student_taps(),
                                                          RELATION_METHODS[name](params).teacher_taps())}
    leaves = {k: v.clone().requires_grad_(True) for k, v in student.items()}
    term = RELATION_METHODS[name](params)
    value = term(ctx_of(leaves, same_teacher))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert all(v.grad.abs().max().item() < 1e-5 for v in leaves.values())
    # and positive elsewhere
    assert term(ctx_of(student, teacher)).item() > 1e-4


@pytest.mark.parametrize("name", ["rkd", "pkt", "sp"])
def test_a_rescaled_student_is_also_at_the_minimum(name):
    # distances over their mean, cosines and row-normalised Gram matrices do not see a scale
    params, student, _ = CASES[name]
    term = RELATION_METHODS[name](params)
    teacher = {t: student[s] for s, t in zip(term.student_taps(), term.teacher_taps())}
    assert term(ctx_of({k: 3.0 * v for k, v in student.items()}, teacher)).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_reaches_the_student_only(name):
    params, student, teacher = CASES[name]
    cls = RELATION_METHODS[name]
    logits_s, logits_t = rand(6, 10, seed=40), rand(6, 10, seed=41)  # the contract tracks the output too
    testing.check_loss_term(cls, params, lambda term: ctx_of(dict(student), dict(teacher), logits_s, logits_t))
    # a teacher feature that requires grad gets none from the term
    s = {k: v.clone().requires_grad_(True) for k, v in student.items()}
    t = {k: v.clone().requires_grad_(True) for k, v in teacher.items()}
    cls(params)(ctx_of(s, t)).backward()
    assert all(v.grad is None for v in t.values())
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in s.values())


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    student = TorchvisionModel({"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True}).build(DIGITS)
    teacher = TorchvisionModel({"model": "mobilenet_v2", "width_mult": 0.5, "cifar_stem": True}).build(DIGITS)
    return student.train(), teacher.eval()


# real layers of the tiny recipe's models (see `kdengine layers`): the 0.25 student's features.3 is
# (8, 4, 4) and features.16 (40,); the 0.5 teacher's features.4 is (16, 2, 2) and features.18 (1280,)
MODEL_CASES = {
    "rkd": {"student_layer": "features.16", "teacher_layer": "features.18"},
    "pkt": {},
    "sp": {"pairs": [["features.2", "features.2"], ["features.4", "features.4"]]},
    "nst": {"student_layer": "features.3", "teacher_layer": "features.4"},
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_gradient_through_real_models_reaches_the_student_only(models, name):
    student, teacher = models
    inputs = rand(6, 1, 8, 8, seed=30)

    def factory(term):
        student.zero_grad(set_to_none=True)
        return testing.context_from_models(term, student, teacher, inputs, torch.arange(6))

    testing.check_loss_term(RELATION_METHODS[name], MODEL_CASES[name], factory)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_params_are_checked():
    testing.check_params(RelationalKD, valid={"student_layer": "a", "teacher_layer": "b", "distance_weight": 1.0},
                         invalid=[{"student_layer": "a"}, {"teacher_layer": "b"}, {"angle_weight": -1.0},
                                  {"student_layer": "", "teacher_layer": "b"}])
    assert RelationalKD.Params().distance_weight == 25.0 and RelationalKD.Params().angle_weight == 50.0
    testing.check_params(ProbabilisticKT, valid={}, invalid=[{"student_layer": "a"}])
    testing.check_params(SimilarityPreserving, valid={"pairs": [["a", "b"]]}, invalid=[{}, {"pairs": []}])
    testing.check_params(NeuronSelectivityTransfer, valid={"student_layer": "a", "teacher_layer": "b"},
                         invalid=[{}, {"student_layer": "a"}])


def test_relations_across_the_batch_are_not_per_sample():
    assert not RelationalKD.per_sample and not ProbabilisticKT.per_sample and not SimilarityPreserving.per_sample
    assert NeuronSelectivityTransfer.per_sample  # a mean of one MMD per sample
    assert all(cls.needs_teacher for cls in RELATION_METHODS.values())


def test_a_missing_feature_names_the_method():
    with pytest.raises(KDEngineError, match=r"rkd: no teacher feature at 't'"):
        RelationalKD({"student_layer": "s", "teacher_layer": "t"})(ctx_of({"s": torch.ones(3, 2)}, {}))
    with pytest.raises(KDEngineError, match=r"sp: no student feature at 's'"):
        SimilarityPreserving({"pairs": [["s", "t"]]})(ctx_of({}, {"t": torch.ones(3, 2)}))


def test_the_catalog_lists_each_method_with_its_paper():
    from kdengine.plugins.catalog import get_catalog

    catalog = get_catalog()
    papers = {"rkd": "Park et al., CVPR 2019", "pkt": "Passalis & Tefas, ECCV 2018",
              "sp": "Tung & Mori, ICCV 2019", "nst": "Huang & Wang, arXiv 2017"}
    for name, paper in papers.items():
        entry = catalog.entry("loss", name)
        assert entry.plugin == "classification" and paper in entry.summary, name
        assert entry.cls is RELATION_METHODS[name]
        module_doc = __import__(entry.cls.__module__, fromlist=["_"]).__doc__
        assert module_doc.startswith(name.upper()) and paper in module_doc.split("\n")[0], name


# ---------------------------------------------------------------------------------------------
# kdengine validate: a tap naming no layer of the model


MISSING = {
    "rkd": ("student", {"student_layer": "features.99", "teacher_layer": "features.18"}),
    "pkt": ("teacher", {"student_layer": "features.18", "teacher_layer": "features.99"}),
    "sp": ("teacher", {"pairs": [["features.2", "features.2"], ["features.4", "features.99"]]}),
    "nst": ("student", {"student_layer": "features.99", "teacher_layer": "features.4"}),
}


def _dry_run_with(tiny_recipe, name):
    from kdengine.tools.validate import dry_run

    tiny_recipe["loss"] = [{"name": name, "weight": 0.5, "params": MISSING[name][1]},
                           {"name": "cross_entropy", "weight": 0.5}]
    with pytest.raises(KDEngineError) as failure:
        dry_run(tiny_recipe)
    return str(failure.value)


@pytest.mark.parametrize("name", list(MISSING))
def test_validate_fails_on_a_tap_naming_no_layer(tiny_recipe, name):
    message = _dry_run_with(tiny_recipe, name)
    role = MISSING[name][0]
    assert f"{role} has no module 'features.99'" in message and "kdengine layers" in message


@pytest.mark.parametrize("name", list(MISSING))
def test_validate_names_the_method_whose_tap_names_no_layer(tiny_recipe, name):
    assert f"loss '{name}': {MISSING[name][0]} has no module 'features.99'" in _dry_run_with(tiny_recipe, name)


def test_a_term_failing_on_its_shapes_is_named_with_the_shapes_it_saw():
    from kdengine.plugins.components import LossTerm
    from kdengine.train.objective import set_up_and_run

    class Mismatched(LossTerm):
        def student_taps(self):
            return ["0"]

        def forward(self, ctx):  # a 4-wide feature against 3 teacher logits: cannot broadcast
            return (ctx.student_features["0"] - ctx.teacher).abs().mean()

    student = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Linear(4, 3))
    with pytest.raises(KDEngineError) as failure:
        set_up_and_run(student, [Mismatched()], torch.randn(5, 2), torch.zeros(5, dtype=torch.long),
                       torch.randn(5, 3), {}, names=["mismatched#2"])
    message = str(failure.value)
    assert message.startswith("loss 'mismatched#2' fails on the shapes it is given")
    assert "student output 5x3" in message and "teacher output 5x3" in message and "student '0' 5x4" in message


def test_running_out_of_memory_in_a_term_is_not_blamed_on_the_term():
    from kdengine.plugins.components import LossTerm
    from kdengine.train.objective import set_up_and_run

    class Hungry(LossTerm):
        def forward(self, ctx):
            raise torch.OutOfMemoryError("no memory left")

    with pytest.raises(torch.OutOfMemoryError):
        set_up_and_run(torch.nn.Linear(2, 3), [Hungry()], torch.randn(5, 2), None, None, {})


# ---------------------------------------------------------------------------------------------
# one tiny run each: digits, mobilenet_v2 x0.25 student, x0.5 teacher, 1 epoch of 2 steps


RUN_LOSSES = {**MODEL_CASES, "pkt": {"student_layer": "features.18", "teacher_layer": "features.18"},
              "rkd": {}}  # rkd on the logits, pkt on the penultimate features


@pytest.mark.parametrize("name", list(RUN_LOSSES))
def test_tiny_run_with_each_method(name, tiny_recipe, tmp_path):
    distilled = distil_once(tiny_recipe, tmp_path, name, RUN_LOSSES[name], teacher_width=0.5)
    losses = distilled.history[0].losses
    assert name in losses and math.isfinite(losses[name]) and losses[name] > 0
    assert 0.0 <= distilled.best["top1"] <= 1.0


def test_kdengine_validate_names_the_file_and_the_method_of_a_missing_tap(tiny_recipe, tmp_path, capsys):
    import json

    from kdengine.cli import main

    tiny_recipe["loss"] = [{"name": "nst", "weight": 0.5, "params": MISSING["nst"][1]},
                           {"name": "cross_entropy", "weight": 0.5}]
    recipe = tmp_path / "nst.json"
    recipe.write_text(json.dumps(tiny_recipe))
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}: loss 'nst': student has no module 'features.99'" in err and "Traceback" not in err
