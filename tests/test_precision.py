"""Training precision: fp16 with its gradient scaler (an overflow is the scaler's business), and
each stage in its own precision."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import kdengine
from kdengine import LossTerm
from kdengine.io.state import TrainingState
from kdengine.recipe import TrainSpec
from kdengine.train.accelerator import make_accelerator
from kdengine.train.optim import Schedule
from kdengine.train.precision import PrecisionWarning
from kdengine.train.step import MIN_GRAD_SCALE, train_step

pytestmark = pytest.mark.usefixtures("one_thread")


def fp16_accelerator():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionWarning)  # fp16 on a CPU: correct, slow
        return make_accelerator("fp16")


class Objective(nn.Module):
    """A linear classifier shaped like the run's objective; ``boost`` adds a term whose gradient
    overflows float16 once multiplied by the scale (its value stays finite)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)
        self.boost = 0.0

    def forward(self, inputs, targets, teacher_out=None, teacher_features=None):
        out = self.lin(inputs)
        loss = nn.functional.cross_entropy(out.float(), targets) + (out.float() * self.boost).mean()
        return out, [loss]


def no_teacher(inputs, rows):
    return None, {}


def set_up(accelerator, **train):
    objective = Objective()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1, momentum=0.9)
    spec = TrainSpec(epochs=1, batch_size=8, scheduler={"name": "cosine"}, **train)
    schedule = Schedule(optimizer, spec.scheduler, 1, 10)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    torch.manual_seed(1)
    batch = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def step():
        return train_step(accelerator, objective, optimizer, schedule, spec, [1.0], ["loss"], *batch, no_teacher, None)
    return objective, optimizer, schedule, step


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_an_overflowed_fp16_step_is_skipped_by_the_scaler_and_training_goes_on():
    accelerator = fp16_accelerator()
    objective, optimizer, schedule, step = set_up(accelerator)
    scale, lr = accelerator.scaler.get_scale(), schedule.lr
    before = params(objective)
    objective.boost = 1e6
    outcome = step()
    assert outcome.problem is None and outcome.scaler_skipped and torch.isfinite(outcome.total)
    assert accelerator.scaler.get_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(before, objective.parameters()))  # no update ...
    assert not optimizer.optimizer.state  # ... not even the momentum buffer
    assert schedule.step_count == 0 and schedule.lr == lr  # the schedule follows the updates made
    objective.boost = 0.0
    outcome = step()
    assert outcome.problem is None and not outcome.scaler_skipped
    assert accelerator.scaler.get_scale() == scale / 2
    assert not all(torch.equal(a, b) for a, b in zip(before, objective.parameters()))
    assert schedule.step_count == 1


def test_fp16_clipping_clips_the_unscaled_gradients():
    accelerator = fp16_accelerator()
    objective, _, _, step = set_up(accelerator, grad_clip=1e-3)
    before = params(objective)
    assert step().problem is None
    moved = torch.cat([(a - b).flatten() for a, b in zip(objective.parameters(), before)]).norm()
    # lr 0.1 times the clipped norm; clipping the scaled gradients would move 65536 times less.
    assert moved.item() == pytest.approx(0.1 * 1e-3, rel=1e-2)


def test_non_finite_gradients_without_a_scaler_are_a_nan_event():
    objective, _, schedule, step = set_up(make_accelerator("no"))
    objective.lin.weight.register_hook(lambda grad: grad * float("inf"))
    before = params(objective)
    outcome = step()
    assert outcome.problem == "non-finite gradients" and not outcome.scaler_skipped
    assert all(torch.equal(a, b) for a, b in zip(before, objective.parameters()))
    assert schedule.step_count == 0


def test_fp16_gradients_non_finite_at_every_scale_are_a_nan_event():
    accelerator = fp16_accelerator()
    objective, _, _, step = set_up(accelerator)
    objective.lin.weight.register_hook(lambda grad: grad * float("nan"))
    outcomes = [step() for _ in range(17)]  # 65536 halved 17 times is 0.5
    assert all(o.scaler_skipped and o.problem is None for o in outcomes[:16])
    assert accelerator.scaler.get_scale() < MIN_GRAD_SCALE
    assert outcomes[16].problem.startswith("non-finite gradients (fp16")


def test_fp16_on_a_cpu_warns_that_bf16_is_faster():
    if torch.cuda.is_available():
        pytest.skip("the warning is for CPU runs")
    with pytest.warns(PrecisionWarning, match="bf16 or 'no' trains faster"):
        accelerator = make_accelerator("fp16")
    assert accelerator.mixed_precision == "fp16" and isinstance(accelerator.scaler, torch.amp.GradScaler)


# ---------------------------------------------------------------------------------------------
# whole runs


def small_fp16_recipe(tiny_recipe):
    """fp16 students after an fp32 teacher (float16 is slow on a CPU), a cosine schedule (a skipped
    step that moved the schedule would show in the lr), 3 steps."""
    tiny_recipe["data"]["params"].update(val_size=64, test_size=64)
    tiny_recipe["teacher"]["train"] = {"mixed_precision": "no"}
    tiny_recipe["train"].update(mixed_precision="fp16", baseline=False, max_steps_per_epoch=3,
                                scheduler={"name": "cosine"})
    return tiny_recipe


#: A gradient scale at which the tiny student never overflows by itself (at PyTorch's 65536 it
#: does, now and then, as fp16 models do): the one overflow in the run is the forced one.
LOW_SCALE = 256.0


def low_scale(monkeypatch):
    """Runs start their fp16 stages' gradient scalers at ``LOW_SCALE`` (Accelerate's GradScalerKwargs)."""
    from accelerate.utils import GradScalerKwargs

    from kdengine.train import run as engine

    def make(*args, **kwargs):
        accelerator = make_accelerator(*args, **kwargs)
        accelerator.scaler_handler = GradScalerKwargs(init_scale=LOW_SCALE)
        return accelerator

    monkeypatch.setattr(engine, "make_accelerator", make)


def run_dir(tmp_path, results) -> Path:
    return tmp_path / Path(results.run_dir).name


@pytest.mark.filterwarnings("ignore::kdengine.train.precision.PrecisionWarning")
def test_an_fp16_overflow_in_a_run_is_the_same_as_skipping_that_batch(tiny_recipe, tmp_path, extra_plugin,
                                                                     monkeypatch):
    calls = {"n": 0, "mode": "overflow"}

    class OnSecondStep(LossTerm):
        """On the distilled student's second step: a finite loss whose gradient overflows float16
        (mode "overflow"), or a NaN loss that ``train.on_nan = "skip"`` leaves out (mode "nan")."""

        needs_teacher = True

        def forward(self, ctx):
            calls["n"] += 1
            if calls["n"] != 2:
                return ctx.student.float().mean() * 0.0
            if calls["mode"] == "nan":
                return ctx.student.float().mean() * float("nan")
            return (ctx.student.float() * 1e6).mean()

    extra_plugin(register_loss_terms=lambda register: register("on_second_step", OnSecondStep))
    low_scale(monkeypatch)
    recipe = small_fp16_recipe(tiny_recipe)
    recipe["loss"].append({"name": "on_second_step", "weight": 1.0})
    overflowed = kdengine.run(recipe, output_dir=tmp_path / "overflow", progress=False)  # on_nan = "stop"
    calls.update(n=0, mode="nan")
    recipe["train"]["on_nan"] = "skip"
    skipped = kdengine.run(recipe, output_dir=tmp_path / "skip", progress=False)

    stage, reference = overflowed.stage("distilled"), skipped.stage("distilled")
    assert (stage.scaler_skipped, stage.history[0].scaler_skipped, stage.history[0].skipped_batches) == (1, 1, 0)
    assert (reference.scaler_skipped, reference.history[0].skipped_batches) == (0, 1)
    assert stage.precision == "fp16" and overflowed.stage("teacher").precision == "no"
    assert stage.history[0].lr == reference.history[0].lr < 0.05  # two steps of the cosine schedule
    a = load_file(str(run_dir(tmp_path / "overflow", overflowed) / "checkpoints/distilled/last.safetensors"))
    b = load_file(str(run_dir(tmp_path / "skip", skipped) / "checkpoints/distilled/last.safetensors"))
    # The scales differ after the overflow (128 against 256): float16 gradients round a little
    # differently where they are tiny, far below what one step of the boosted loss would move.
    assert all(torch.isfinite(a[k]).all() and torch.allclose(a[k], b[k], rtol=1e-2, atol=1e-3) for k in a)
    assert stage.test_last == pytest.approx(reference.test_last, abs=1 / 64)  # at most one test image apart
    # The scale halved once, and the training state keeps it for a resume.
    state = TrainingState.load(run_dir(tmp_path / "overflow", overflowed) / "checkpoints/distilled/state.pt")
    assert state.scaler["scale"] == LOW_SCALE / 2
    assert "the fp16 gradient scaler skipped 1 overflowed step" in \
        (run_dir(tmp_path / "overflow", overflowed) / "results.md").read_text()


def test_each_stage_trains_in_its_own_precision(tiny_recipe, tmp_path, extra_plugin):
    seen: dict[int, set] = {}

    class Spy(LossTerm):
        """Records the autocast state and the student's output type inside the objective."""

        def forward(self, ctx):
            seen.setdefault(id(self), set()).add(
                (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"), ctx.student.dtype))
            return ctx.student.float().mean() * 0.0

    extra_plugin(register_loss_terms=lambda register: register("spy", Spy))
    tiny_recipe["loss"].append({"name": "spy", "weight": 1.0})
    tiny_recipe["data"]["params"].update(val_size=64, test_size=64)
    tiny_recipe["teacher"]["train"] = {"mixed_precision": "bf16"}
    tiny_recipe["train"].update(mixed_precision="no", baseline=False)
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    teacher, student = seen.values()  # one loss term instance per stage, in stage order
    assert teacher == {(torch.bfloat16, torch.bfloat16)}
    assert student == {(False, torch.float32)}
    assert [(s.stage, s.precision) for s in results.stages] == [("teacher", "bf16"), ("distilled", "no")]
