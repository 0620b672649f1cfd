"""kdengine.train.balance and ``[[loss]] weight = "auto"``: measured weights give each auto term its
share of the gradient, fixed weights stay, measuring leaves no trace, the weights are printed,
recorded and reused on resume, and the impossible cases are refused with the field named."""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from conftest import TINY_RECIPE
from torch import nn

import kdengine
from kdengine import KDEngineError, LossTerm, RecipeError, load_recipe
from kdengine.io.state import TrainingState
from kdengine.recipe import LossSpec
from kdengine.recipe.shares import stage_shares
from kdengine.tools.validate import dry_run
from kdengine.train import balance
from kdengine.train.balance import measure_gradient_norms, solve_weights
from kdengine.train.objective import StudentObjective, build_loss_terms, term_keys
from kdengine.train.stage import EpochKeeper

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# a toy problem: a tiny linear student, a term with a huge gradient and one with a small one


class Targets(LossTerm):
    """100 x MSE to the targets: a gradient hundreds of times the other term's."""

    def forward(self, ctx):
        return 100.0 * ((ctx.student - ctx.targets) ** 2).mean()


class Small(LossTerm):
    """A small pull of the outputs towards 0."""

    def forward(self, ctx):
        return 0.01 * (ctx.student ** 2).mean()


class OwnParameterOnly(LossTerm):
    """Trains a parameter of its own and never reaches the student (like a feature term whose
    taps do not lead back to the student's parameters)."""

    def __init__(self, params=None):
        super().__init__(params)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, ctx):
        return (self.scale * ctx.student.detach()).pow(2).mean()


def toy_student(normalise: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8), nn.Dropout(0.3)] if normalise else []) + [nn.Linear(8, 2)]
    return nn.Sequential(*layers)


def toy_batches(count: int = 3, rows: int = 8):
    generator = torch.Generator().manual_seed(1)
    no_teacher = lambda inputs, rows: (None, {})  # noqa: E731
    return [(torch.randn(rows, 4, generator=generator), torch.randn(rows, 2, generator=generator), no_teacher, None)
            for _ in range(count)]


def spec(weight, share=None) -> LossSpec:
    return LossSpec(name="toy", weight=weight, share=share)


def independent_norms(objective: StudentObjective, batches) -> list[float]:
    """Each term's gradient norm w.r.t. the student, with .backward() per term, averaged."""
    params = [p for p in objective.student.parameters()]
    sums = [0.0] * len(objective.terms)
    for inputs, targets, _, _ in batches:
        _, values = objective(inputs, targets)
        for j, value in enumerate(values):
            objective.zero_grad(set_to_none=True)
            value.backward(retain_graph=True)
            sums[j] += float(torch.sqrt(sum((p.grad ** 2).sum() for p in params if p.grad is not None)))
    objective.zero_grad(set_to_none=True)
    return [s / len(batches) for s in sums]


def shares_of(weights, norms) -> list[float]:
    total = sum(w * g for w, g in zip(weights, norms))
    return [w * g / total for w, g in zip(weights, norms)]


@pytest.mark.parametrize("weights, specs, asked", [
    ([0.5, "auto"], [spec(0.5), spec("auto", 0.5)], [0.5, 0.5]),
    ([0.5, "auto"], [spec(0.5), spec("auto", 0.2)], [0.8, 0.2]),
    (["auto", "auto"], [spec("auto", 0.25), spec("auto", 0.25)], [0.5, 0.5]),  # relative when all are auto
    (["auto", "auto"], [spec("auto"), spec("auto", 0.3)], [0.5 / 0.8, 0.3 / 0.8]),
], ids=["fixed+half", "fixed+fifth", "all-auto", "all-auto-default-share"])
def test_measured_weights_give_each_term_its_share(weights, specs, asked):
    objective = StudentObjective(toy_student(), [Targets(), Small()], [])
    batches = toy_batches()
    torch.manual_seed(5)
    norms, counted = measure_gradient_norms(objective, batches)
    assert counted == 3 and norms[0] > 100 * norms[1]  # the scales really are far apart
    solved = solve_weights(weights, stage_shares(specs), [n / counted for n in norms], ["loss[0]", "loss[1]"])
    if weights[0] != "auto":
        assert solved[0] == 0.5  # a fixed weight is kept
    else:
        assert math.isclose(sum(solved), 1.0)
    torch.manual_seed(5)  # the same dropout masks as the measurement drew
    objective.train()
    got = shares_of(solved, independent_norms(objective, batches))
    for g, a in zip(got, asked):
        assert g == pytest.approx(a, rel=0.02)


def test_measuring_leaves_parameters_statistics_modes_and_generators_as_found():
    objective = StudentObjective(toy_student(), [Targets(), Small()], [])
    objective.eval()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    measure_gradient_norms(objective, toy_batches())
    assert torch.equal(torch.rand(3), expected)  # dropout's draws were given back
    after = objective.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert not any(m.training for m in objective.modules())
    assert all(p.grad is None for p in objective.parameters())


def test_micro_batches_measure_the_whole_batch_gradient():
    objective = StudentObjective(toy_student(normalise=False), [Targets(), Small()], [])
    whole, _ = measure_gradient_norms(objective, toy_batches())
    split, _ = measure_gradient_norms(objective, toy_batches(), micro_batch=3)
    assert split == pytest.approx(whole, rel=1e-5)


def test_a_term_that_does_not_reach_the_student_is_refused_naming_its_field():
    objective = StudentObjective(toy_student(), [Targets(), OwnParameterOnly()], [])
    norms, counted = measure_gradient_norms(objective, toy_batches())
    assert norms[1] == 0.0
    with pytest.raises(KDEngineError, match=r"r\.toml: loss\[1\]\.weight: .*measured zero"):
        solve_weights([0.5, "auto"], [None, 0.5], norms, ["loss[0]", "loss[1]"], "r.toml")


def test_fixed_terms_without_gradient_leave_nothing_to_share():
    with pytest.raises(KDEngineError, match=r"loss\[0\]\.weight: the fixed-weight terms' gradient measured zero"):
        solve_weights([0.0, "auto"], [None, 0.5], [1.0, 2.0], ["loss[0]", "loss[1]"])


def test_same_named_terms_get_distinct_keys():
    names = [LossSpec(name=n) for n in ("cwd", "soft_bce", "cwd", "cwd")]
    assert term_keys(names) == ["cwd", "soft_bce", "cwd#2", "cwd#3"]


# ---------------------------------------------------------------------------------------------
# the recipe: auto weights, shares, and what is refused before anything trains


def test_auto_weights_and_shares_validate(tiny_recipe):
    tiny_recipe["loss"][0].update(weight="auto", share=0.6)
    recipe = load_recipe(tiny_recipe)
    assert recipe.loss[0].weight == "auto" and recipe.loss[0].share == 0.6
    assert recipe.train.balance_steps == 5


def test_teacherless_stages_keep_auto_terms_and_renormalise_the_fixed(tiny_recipe):
    tiny_recipe["loss"] = [{"name": "kl_div", "weight": "auto"}, {"name": "cross_entropy", "weight": 0.1},
                           {"name": "cross_entropy", "weight": "auto"}]
    recipe = load_recipe(tiny_recipe)
    _, _, taught = build_loss_terms(recipe, with_teacher=True)
    _, _, alone = build_loss_terms(recipe, with_teacher=False)
    assert taught == ["auto", 0.1, "auto"] and alone == [1.0, "auto"]


@pytest.mark.parametrize("losses, where", [
    ([{"name": "kl_div", "weight": "auto", "share": 0.7}, {"name": "cross_entropy", "weight": "auto", "share": 0.4},
      {"name": "cross_entropy", "weight": 0.1}], "loss[0].share: "),
    # fine with the teacher (0.7 + 1/5), but the stages without it keep three terms: 0.7 + 1/3
    ([{"name": "kl_div", "weight": 0.5}, {"name": "kl_div", "weight": 0.5}, {"name": "cross_entropy", "weight": 0.1},
      {"name": "cross_entropy", "weight": "auto", "share": 0.7}, {"name": "cross_entropy", "weight": "auto"}],
     "loss[3].share: the shares of the terms with weight = \"auto\" in the stages without a teacher"),
], ids=["with-teacher", "without-teacher"])
def test_shares_leaving_fixed_terms_nothing_are_refused_before_training(tiny_recipe, losses, where):
    tiny_recipe["loss"] = losses
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe)
    assert f"<dict>: {where}" in str(info.value) and "must sum to less than 1" in str(info.value)


def test_a_share_needs_an_auto_weight_and_weights_are_numbers_or_auto(tiny_recipe):
    tiny_recipe["loss"][0]["share"] = 0.5
    tiny_recipe["loss"][1]["weight"] = "balanced"
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe)
    lines = info.value.problems
    assert any(l.startswith("loss[0].share: only a term with weight = \"auto\"") for l in lines), lines
    assert any(l.startswith("loss[1].weight: input should be a number or \"auto\"") for l in lines), lines


def test_validate_measures_auto_weights_on_its_one_batch(tiny_recipe):
    tiny_recipe["loss"][0]["weight"] = "auto"
    report = dry_run(tiny_recipe)
    (line,) = report.loss_weights
    assert line.startswith("loss weights (auto, measured on this one batch; training measures on each stage's "
                           "first train.balance_steps = 5 batches): kl_div ")
    assert "cross_entropy 0.1 (fixed)" in line and any(l.strip() == line for l in report.lines())
    assert math.isfinite(report.loss_values["total"])


# ---------------------------------------------------------------------------------------------
# a run: printed, recorded, logged per term, reused on resume


class Interrupt(Exception):
    pass


SENTINEL = 0.777


@pytest.fixture(scope="module")
def interrupted_and_resumed(tmp_path_factory):
    """A tiny distillation with two kl_div terms (one auto) and an auto cross_entropy, stopped
    after the distilled stage's first epoch, its recorded kl_div weight changed, and resumed."""
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["data"]["params"].update(val_size=64, test_size=64)
    recipe["teacher"]["train"] = {"epochs": 1}
    recipe["train"].update(epochs=2, baseline=False, balance_steps=2)
    recipe["loss"] = [{"name": "kl_div", "weight": "auto", "share": 0.5, "params": {"temperature": 4.0}},
                      {"name": "kl_div", "weight": 0.2, "params": {"temperature": 1.0}},
                      {"name": "cross_entropy", "weight": "auto"}]
    root = tmp_path_factory.mktemp("balanced")
    original_keep = EpochKeeper.keep

    def keep_then_stop(self, record, *args):
        original_keep(self, record, *args)
        if self.plan.name == "distilled" and record.epoch == 1:
            raise Interrupt

    def no_measuring(*args, **kwargs):
        raise AssertionError("a resumed stage measured its loss weights again")

    first, second = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EpochKeeper, "keep", keep_then_stop)
        patch.setattr(balance, "console", Console(file=first, width=100))
        with pytest.raises(Interrupt):
            kdengine.run(recipe, progress=True, output_dir=root)
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    state_file = run_dir / "checkpoints" / "distilled" / "state.pt"
    state = TrainingState.load(state_file)
    measured = dict(state.result.loss_weights)
    state.result.loss_weights["kl_div"] = SENTINEL
    state.save(state_file)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(balance, "measure_gradient_norms", no_measuring)
        patch.setattr(balance, "console", Console(file=second, width=100))
        results = kdengine.resume(run_dir, progress=True)
    return {"run_dir": run_dir, "measured": measured, "results": results,
            "printed": first.getvalue(), "printed_on_resume": second.getvalue()}


def test_the_chosen_weights_are_printed_on_one_line(interrupted_and_resumed):
    lines = interrupted_and_resumed["printed"].splitlines()
    (distilled,) = [l for l in lines if l.startswith("distilled: ")]
    assert distilled.startswith("distilled: loss weights (auto, measured over 2 batches): kl_div ")
    assert "(share 0.50), kl_div#2 0.2 (fixed), cross_entropy " in distilled
    assert distilled.endswith("(share 0.33)")
    # the teacher trains on cross_entropy alone: the one auto term left gets weight 1
    assert "teacher: loss weights (auto, measured over 2 batches): cross_entropy 1 (share 1.00)" in lines


def test_the_weights_are_recorded_and_reported(interrupted_and_resumed):
    measured, run_dir = interrupted_and_resumed["measured"], interrupted_and_resumed["run_dir"]
    assert set(measured) == {"kl_div", "kl_div#2", "cross_entropy"}
    assert measured["kl_div#2"] == 0.2 and all(math.isfinite(w) and w > 0 for w in measured.values())
    saved = json.loads((run_dir / "results.json").read_text())
    stages = {s["stage"]: s for s in saved["stages"]}
    assert stages["teacher"]["loss_weights"] == {"cross_entropy": 1.0}
    report = (run_dir / "results.md").read_text()
    assert "Loss weights (terms with `weight = \"auto\"`" in report
    assert f"- student (distilled): kl_div {SENTINEL:.4g}, kl_div#2 0.2, cross_entropy " in report


def test_a_resumed_stage_reuses_the_recorded_weights(interrupted_and_resumed):
    distilled = interrupted_and_resumed["results"].stage("distilled")
    assert distilled.loss_weights == {**interrupted_and_resumed["measured"], "kl_div": SENTINEL}
    assert [r.epoch for r in distilled.history] == [1, 2]
    assert "distilled: loss weights (auto, recorded when the stage started): kl_div 0.777 (share 0.50)" in \
        interrupted_and_resumed["printed_on_resume"]


def test_two_terms_of_one_name_are_logged_apart(interrupted_and_resumed):
    distilled = interrupted_and_resumed["results"].stage("distilled")
    for record in distilled.history:
        assert set(record.losses) == {"total", "kl_div", "kl_div#2", "cross_entropy"}
        assert record.losses["kl_div"] != record.losses["kl_div#2"]  # temperatures 4 and 1
    lines = [json.loads(l) for l in (interrupted_and_resumed["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert any("kl_div#2" in json.dumps(line) for line in lines)


def test_measuring_changes_nothing_in_training(tmp_path):
    """A stage with an auto weight ends bitwise where the same stage with that weight written in
    does: the measurement moved no BatchNorm statistic, no generator, no data order."""
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["data"]["params"].update(val_size=32, test_size=32)
    recipe["teacher"]["train"] = {"epochs": 1}
    recipe["train"].update(baseline=False, balance_steps=2)
    recipe["loss"][0].update(weight="auto", share=0.5)
    auto = kdengine.run(recipe, progress=False, output_dir=tmp_path / "auto")
    weight = auto.stage("distilled").loss_weights["kl_div"]
    recipe["loss"][0] = {**recipe["loss"][0], "weight": weight}
    del recipe["loss"][0]["share"]
    fixed = kdengine.run(recipe, progress=False, output_dir=tmp_path / "fixed")
    assert fixed.stage("distilled").loss_weights == {}
    got, expected = (load_file(str(Path(r.run_dir) / "checkpoints" / "distilled" / "last.safetensors"))
                     for r in (auto, fixed))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


# ---------------------------------------------------------------------------------------------
# the edge task: the paper's weighted_bce beside an auto soft_bce


TINY_EDGE = {
    "run": {"name": "edge-balanced", "seed": 0},
    "data": {"name": "synthetic_edges", "params": {"size": 32, "train_size": 8, "val_size": 4, "test_size": 4}},
    "teacher": {"name": "unet", "params": {"encoder": "resnet18", "decoder_channels": [32, 32, 32, 32, 16]},
                "train": {"epochs": 1}},
    "student": {"name": "unet", "params": {"encoder": "mobilenet_v2", "decoder_channels": [16, 16, 16, 16, 8]}},
    "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "baseline": False,
              "optimizer": {"name": "adam", "lr": 3e-4}, "monitor": "dice"},
    "loss": [{"name": "weighted_bce", "weight": 0.5, "params": {"pos_weight": 10.0}},
             {"name": "soft_bce", "weight": "auto", "share": 0.5, "params": {"temperature": 2.0}}],
    "metric": [{"name": "dice"}],
}


def test_tiny_edge_run_balances_soft_bce_against_weighted_bce(tmp_path, monkeypatch):
    from kdengine.train import balance

    measured = []
    real = balance.measure_gradient_norms

    def spy(*args, **kwargs):
        measured.append(real(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(balance, "measure_gradient_norms", spy)
    results = kdengine.run(copy.deepcopy(TINY_EDGE), progress=False, output_dir=tmp_path)
    weights = results.stage("distilled").loss_weights
    assert weights["weighted_bce"] == 0.5
    ((sums, counted),) = measured  # the distilled stage's one measurement
    norms = [total / counted for total in sums]
    # share 0.5: the weighted soft_bce gradient is as large as the fixed weighted_bce one
    assert weights["soft_bce"] * norms[1] == pytest.approx(0.5 * norms[0], rel=1e-6)
    assert norms[1] > 0 and weights["soft_bce"] != 0.5
    assert results.stage("teacher").loss_weights == {}  # nothing auto left without a teacher


def test_every_process_measures_the_auto_weights_on_the_whole_batch():
    """Under two processes each process is given the whole batch: both shares, each augmented and
    taught as its own process trains on it (before, each measured on its share alone, so the
    weights depended on the process count)."""
    from types import SimpleNamespace

    from kdengine.train.balance import first_batches
    from kdengine.train.setup import StageSetup

    batch = (torch.arange(8.0).reshape(4, 2), torch.tensor([0, 1, 2, 3]))

    class Loader(list):
        sampler = SimpleNamespace(set_epoch=lambda epoch: None)

    class Source:
        def step(self, epoch, step, process):  # a teacher whose output says which process asked
            return lambda inputs, rows: (inputs[rows] * 2 + process, {"f": inputs[rows] + 10 * process})

    for process in (0, 1):
        ctx = SimpleNamespace(train_loader=lambda train: Loader([batch]), device=torch.device("cpu"),
                              accelerator=SimpleNamespace(num_processes=2, process_index=process))
        plan = SimpleNamespace(train=SimpleNamespace(channels_last=False))
        augment = lambda x, y, epoch, step, process: (x + 100 * process, y)  # noqa: E731
        setup = StageSetup(ctx, plan, losses=None, steps=1, sizes=[4], augment=augment, transfer=None)
        ((inputs, targets, teach, labelled),) = list(first_batches(setup, Source(), 1))
        x = batch[0]
        expected = torch.cat([x[:2], x[2:] + 100])
        assert torch.equal(inputs, expected) and torch.equal(targets, batch[1]) and labelled is None
        out, feats = teach(inputs, slice(1, 3))  # a micro-batch across the two shares
        assert torch.equal(out, torch.cat([expected[:2] * 2, expected[2:] * 2 + 1])[1:3])
        assert torch.equal(feats["f"], torch.cat([expected[:2], expected[2:] + 10])[1:3])
