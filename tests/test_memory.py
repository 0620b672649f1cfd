"""train.max_memory: sizes, the peak meter, the micro-batch plan, and gradient accumulation."""

from __future__ import annotations

import copy
import re
import sys

import pytest
import torch
from torch import nn

import kdengine
from kdengine.teacher.precision import TeacherRunner
from kdengine.train import memory
from kdengine.plugins.components import LossTerm
from kdengine.train.accelerator import make_accelerator
from kdengine.train.objective import StudentObjective
from kdengine.train.step import accumulate
from kdengine.errors import KDEngineError, RecipeError
from kdengine.recipe.units import parse_size
from kdengine.train.memory import PeakMeter, plan_micro_batch

pytestmark = pytest.mark.usefixtures("one_thread")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset is Linux-only")


@pytest.mark.parametrize("text, expected", [("4GiB", 4 * 2**30), ("512 MiB", 512 * 2**20), ("1.5gb", 1_500_000_000),
                                            ("2048", 2048)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["4 gigs", "-1GiB", "GiB", "0"])
def test_bad_sizes_name_the_field(text, tiny_recipe):
    tiny_recipe["train"]["max_memory"] = text
    with pytest.raises(RecipeError, match="train.max_memory"):
        kdengine.load_recipe(tiny_recipe)


@linux_only
def test_peak_meter_sees_an_allocation_and_forgets_it_after_reset():
    meter = PeakMeter(torch.device("cpu"))
    meter.reset()
    base = meter.peak()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert meter.peak() - base >= 60 * 2**20
    del block
    meter.reset()
    assert meter.peak() - base < 32 * 2**20


def test_plan_picks_the_largest_micro_batch_within_the_budget():
    mib = 2**20
    measure = lambda rows: 100 * mib + rows * 10 * mib
    plan = plan_micro_batch(measure, batch=64, budget=400 * mib, extra=50 * mib)
    usable = 400 * (1 - memory.HEADROOM)  # MiB, after the headroom
    assert plan.micro_batch == int((usable - 50 - 100) // 10) == 22 and plan.accumulation_steps == 3
    assert plan.measured[22] + plan.extra <= usable * mib
    assert plan_micro_batch(measure, batch=16, budget=400 * mib, extra=0).micro_batch is None  # all fits
    with pytest.raises(KDEngineError, match=r"train.max_memory: .* below what training needs"):
        plan_micro_batch(measure, batch=64, budget=120 * mib, extra=50 * mib)


def test_plan_backs_off_when_memory_grows_faster_than_linearly():
    mib = 2**20
    measure = lambda rows: 100 * mib + rows * 10 * mib + (rows > 16) * rows * 10 * mib
    plan = plan_micro_batch(measure, batch=64, budget=400 * mib, extra=0)
    assert plan.micro_batch is not None and measure(plan.micro_batch) <= 400 * mib


@linux_only
def test_plan_on_real_allocations():
    """Each row holds 4 MiB of activations: the plan from real RSS measurements fits the budget."""
    meter = PeakMeter(torch.device("cpu"))
    meter.reset()
    base = meter.peak()

    def measure(rows):
        meter.reset()
        held = [torch.ones(2**20) for _ in range(rows)]  # 4 MiB each
        peak = meter.peak()
        del held
        return peak

    plan = plan_micro_batch(measure, batch=128, budget=int((base + 100 * 2**20) / (1 - memory.HEADROOM)), extra=0)
    assert plan.micro_batch is not None and 15 <= plan.micro_batch <= 25
    assert 3.5 * 2**20 <= plan.per_row <= 4.6 * 2**20


class _CE(LossTerm):
    def forward(self, ctx):
        return nn.functional.cross_entropy(ctx.student, ctx.targets)


def test_accumulated_micro_batches_give_the_whole_batch_gradient():
    torch.manual_seed(0)
    accelerator = make_accelerator("no")
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    objective = StudentObjective(student, [_CE()], [])
    inputs, targets = torch.randn(10, 6), torch.randint(0, 4, (10,))
    teach = lambda x, rows: (None, {})
    grads = []
    for micro in (None, 3, 4):
        objective.zero_grad(set_to_none=True)
        total, values, problem = accumulate(accelerator, objective, [1.0], ["ce"], inputs, targets, teach, micro)
        assert problem is None
        grads.append(([p.grad.clone() for p in objective.parameters()], float(total)))
    for other, loss in grads[1:]:
        assert loss == pytest.approx(grads[0][1], rel=1e-6)
        for a, b in zip(grads[0][0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_run_under_a_budget_trains_in_micro_batches(tiny_recipe, tmp_path, monkeypatch, capsys):
    """The wiring: the measured plan decides the micro-batch the loop and the teacher then use."""
    recipe = copy.deepcopy(tiny_recipe)
    recipe["train"]["max_memory"] = "1GiB"
    recipe["train"]["baseline"] = False
    recipe["loss"].append({"name": "dist", "weight": 0.1})  # correlates the batch: not per-sample
    rows_seen = []

    class FakeMeter:  # 600 MiB fixed + 40 MiB per row: 9 rows fit in 1 GiB (less headroom) beside the optimizer state
        def __init__(self, device):
            pass

        def reset(self):
            pass

        def peak(self):
            return 600 * 2**20 + student_rows[-1] * 40 * 2**20

    student_rows = []  # the rows of each student forward pass, teacher stage included
    original_context = StudentObjective.context

    def count_rows(objective, inputs, *args):
        student_rows.append(inputs.shape[0])
        return original_context(objective, inputs, *args)

    monkeypatch.setattr(StudentObjective, "context", count_rows)
    original_forward = TeacherRunner.__call__

    def spy(runner, inputs):
        rows_seen.append(inputs.shape[0])
        return original_forward(runner, inputs)

    monkeypatch.setattr(memory, "PeakMeter", FakeMeter)
    monkeypatch.setattr(TeacherRunner, "__call__", spy)
    results = kdengine.run(recipe, progress=True, output_dir=tmp_path)
    distilled = results.stage("distilled")
    assert distilled.micro_batch is not None and 1 <= distilled.micro_batch < 32
    # Every training batch of 32 went through the teacher in micro-batches of that size.
    training_rows = rows_seen[-(2 * ((32 + distilled.micro_batch - 1) // distilled.micro_batch)):]
    assert max(training_rows) == distilled.micro_batch and sum(training_rows) == 2 * 32
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "train.max_memory 1.00 GiB: batch 32 as" in err
    # The gradient of dist and of the student's BatchNorm is the micro-batches', and the run says so.
    dist, norms = distilled.micro_batch_coupled
    assert dist == "dist" and re.fullmatch(r"BatchNorm \(\d+ layers\)", norms)
    assert f"dist and {norms} see each micro-batch, not the whole batch" in err
    report = (tmp_path / next(p.name for p in tmp_path.iterdir()) / "results.md").read_text()
    assert (f"student (distilled) trained in micro-batches of {distilled.micro_batch} rows (`train.max_memory`): "
            f"dist and {norms} see each micro-batch, not the whole batch") in report


class _Batchwise(LossTerm):
    per_sample = False

    def forward(self, ctx):
        return ctx.student.std(dim=0).mean()


def test_batch_coupled_names_batchwise_terms_and_batchnorm():
    from kdengine.plugins.coupling import batch_coupled

    plain = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert batch_coupled(plain, [_CE()], ["cross_entropy"]) == []
    normed = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    assert batch_coupled(normed, [_CE(), _Batchwise()], ["cross_entropy", "spread"]) == ["spread", "BatchNorm (2 layers)"]


def test_crd_and_dist_are_not_per_sample():
    from kdengine_classification.kd_methods.crd import ContrastiveRepresentation
    from kdengine_classification.kd_methods.dist import DIST
    from kdengine_classification.losses import CrossEntropy, KLDivergence

    assert not ContrastiveRepresentation.per_sample and not DIST.per_sample
    assert KLDivergence.per_sample and CrossEntropy.per_sample


def test_validate_says_what_micro_batches_would_not_see_whole(tiny_recipe):
    from kdengine.tools.validate import dry_run

    recipe = copy.deepcopy(tiny_recipe)
    recipe["loss"].append({"name": "dist", "weight": 0.1})
    assert dry_run(recipe).micro_batch_coupled == {}  # no budget: the whole batch in one pass
    recipe["train"]["max_memory"] = "4GiB"
    report = dry_run(recipe)
    assert set(report.micro_batch_coupled) == {"teacher", "scratch", "distilled"}
    assert report.micro_batch_coupled["distilled"][0] == "dist"
    assert "dist" not in report.micro_batch_coupled["scratch"]  # the baseline trains without the teacher's terms
    assert report.micro_batch_coupled["scratch"][0].startswith("BatchNorm (")
    line = next(l for l in report.lines() if "train.max_memory: distilled:" in l)
    assert "dist and BatchNorm" in line and "not the whole batch" in line


def test_a_resumed_stage_keeps_its_recorded_micro_batch(tiny_recipe, tmp_path, monkeypatch):
    """A stage interrupted after epoch 1 goes on with the micro-batch it measured then, even where
    a measurement now would give another (before, it trained on the new one under the old record)."""
    from conftest import interrupt_after_epoch

    import kdengine.train.stage as stage_module
    from types import SimpleNamespace

    recipe = copy.deepcopy(tiny_recipe)
    recipe["train"].update(max_memory="1GiB", baseline=False, epochs=2)
    measured = {"rows": 8}  # what a measurement gives: 8 in the first run, 4 after the interruption
    monkeypatch.setattr(stage_module, "plan_memory", lambda *args: SimpleNamespace(micro_batch=measured["rows"],
                                                                                  coupled=[]))
    used = []
    real_step = stage_module.train_step

    def spy(*args, **kwargs):
        used.append(args[-1])  # the micro-batch
        return real_step(*args, **kwargs)

    monkeypatch.setattr(stage_module, "train_step", spy)
    interrupt_after_epoch(monkeypatch, "distilled", 1)
    with pytest.raises(RuntimeError, match="interrupted"):
        kdengine.run(recipe, progress=False, output_dir=tmp_path)
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert set(used) == {8}
    used.clear()
    measured["rows"] = 4
    resumed = kdengine.resume(run_dir, progress=False)
    assert set(used) == {8} and resumed.stage("distilled").micro_batch == 8
