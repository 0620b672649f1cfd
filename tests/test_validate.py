"""The dry run (kdengine.tools.validate): one forward pass per model where it can, FLOPs counted on
those passes, teacher precisions timed on a few rows, the teacher cache's size predicted."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import MobileNetV2

from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.components import DataInfo
from kdengine.teacher import precision as inference
from kdengine.tools.measure import count_flops
from kdengine.tools import validate
from kdengine.tools.validate import CHECK_ROWS, TIMING_ROWS, ForwardMeter, dry_run

pytestmark = pytest.mark.usefixtures("one_thread")


def count_model_forwards(monkeypatch) -> list[int]:
    """The batch size of every forward pass of a whole MobileNetV2 (the tiny recipe's models)."""
    calls: list[int] = []
    original = MobileNetV2.forward

    def counted(self, x):
        calls.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(MobileNetV2, "forward", counted)
    return calls


def test_the_teacher_and_the_student_each_run_once_on_the_batch(tiny_recipe, monkeypatch):
    calls = count_model_forwards(monkeypatch)
    report = dry_run(tiny_recipe)
    # the teacher's pass, then the student's (set-up, loss and backward), on the first rows only
    assert calls == [CHECK_ROWS, CHECK_ROWS]
    assert report.batch_shape[0] == 32 and report.checked_rows == CHECK_ROWS
    assert report.loss_values["total"] == report.loss_values["total"]  # finite, not NaN
    assert f"models and losses run on {CHECK_ROWS} of its 32 rows" in "\n".join(report.lines())


def test_flops_are_those_of_a_whole_batch_pass_of_their_own(tiny_recipe):
    tiny_recipe["student"]["params"]["width_mult"] = 0.5  # two architectures: two rows
    report = dry_run(tiny_recipe)
    info = DataInfo("classification", 1, 10)
    sample = torch.zeros(report.batch_shape)
    for row, spec in zip(report.models, (tiny_recipe["teacher"], tiny_recipe["student"])):
        model = get_catalog().get(row.role, spec["name"])(spec["params"]).build(info).eval()
        assert row.forward_flops == count_flops(model, sample) > 0 and row.seconds > 0


def test_a_chain_runs_each_teaching_model_once_and_counts_each_architecture_once(tiny_recipe, monkeypatch):
    recipe = copy.deepcopy(tiny_recipe)
    student = recipe.pop("student")
    half = copy.deepcopy(student)
    half["params"]["width_mult"] = 0.5
    recipe.update(generation=[{"name": "g2", "student": student}, {"name": "g3", "student": half}], direct=True)
    recipe["train"]["baseline"] = False
    calls = count_model_forwards(monkeypatch)
    report = dry_run(recipe)
    # teacher; g2 as student; g2 as g3's teacher; g3; direct (taught by the teacher's kept outputs)
    assert len(calls) == 5
    assert [m.role for m in report.models] == ["teacher", "student"]  # g2 is the teacher's architecture
    assert {"g2: total", "g3: total", "direct: total"} <= set(report.loss_values)


def test_the_meter_counts_the_next_forward_only_and_puts_the_model_back():
    model = nn.Linear(4, 3)
    meter = ForwardMeter()
    with meter.next_forward("linear", model):
        model(torch.zeros(2, 4))
        model(torch.zeros(5, 4))  # not counted
    assert meter.measured["linear"][0] == 2 * 2 * 4 * 3
    assert "forward" not in vars(model)
    with meter.next_forward("linear", model):  # counted already: nothing is wrapped
        assert "forward" not in vars(model)


def test_auto_precision_times_the_candidates_on_a_few_rows(tiny_recipe, monkeypatch):
    rows: list[int] = []
    original = inference.TeacherRunner.__call__

    def spy(self, inputs):
        rows.append(inputs.shape[0])
        return original(self, inputs)

    monkeypatch.setattr(inference.TeacherRunner, "__call__", spy)
    tiny_recipe["teacher"]["precision"] = "auto"
    report = dry_run(tiny_recipe)
    assert report.timing_rows == TIMING_ROWS
    # One pass on the batch for the loss check; then warm-up and 2 timed runs per candidate.
    assert rows == [CHECK_ROWS] + [TIMING_ROWS] * 3 * len(report.teacher_inference)
    text = "\n".join(report.lines())
    assert f"timed on {TIMING_ROWS} images" in text and "<- fastest, used" in text


def test_the_cache_size_is_printed_before_the_cache_is_built(tiny_recipe, tmp_path):
    tiny_recipe["teacher"].update(cache=True, cache_dir=str(tmp_path / "cache"), cache_dtype="float32")
    tiny_recipe["train"].update(epochs=3, baseline=False)
    report = dry_run(tiny_recipe)
    (cache,) = report.caches
    # 2 steps of 32 rows (max_steps_per_epoch), 10 float32 logits a row, 3 epochs, one .npy an epoch.
    assert (cache.stages, cache.rows, cache.epochs) == (["distilled"], 64, 3)
    assert cache.bytes == 3 * (128 + 64 * 10 * 4)  # .npy headers are 128 bytes
    assert any(line.startswith("  teacher cache (distilled): ") and "MiB on disk" in line for line in report.lines())
    assert not (tmp_path / "cache").exists()


def test_validate_without_the_cache_predicts_none(tiny_recipe):
    assert dry_run(tiny_recipe).caches == []


def test_cache_estimates_share_one_cache_between_stages_taught_alike(tiny_recipe):
    recipe = copy.deepcopy(tiny_recipe)
    student = recipe.pop("student")
    recipe.update(generation=[{"name": "g2", "student": student}], direct=True)
    recipe["teacher"]["cache"] = True
    recipe["train"]["baseline"] = False
    report = dry_run(recipe)
    assert [c.stages for c in report.caches] == [["g2", "direct"]]  # both taught by the teacher's best weights


def test_two_dry_runs_of_a_recipe_report_the_same_losses(tiny_recipe):
    first = dry_run(copy.deepcopy(tiny_recipe)).loss_values
    assert dry_run(tiny_recipe).loss_values == first  # the teacher too is built under the run's seed


def test_a_check_on_a_few_rows_reports_what_the_whole_batch_would(tiny_recipe, monkeypatch):
    few = dry_run(copy.deepcopy(tiny_recipe))
    monkeypatch.setattr(validate, "CHECK_ROWS", 32)
    whole = dry_run(tiny_recipe)
    assert (few.checked_rows, whole.checked_rows) == (CHECK_ROWS, 32) and few.batch_shape == whole.batch_shape
    assert [m.forward_flops for m in few.models] == [m.forward_flops for m in whole.models]
    # weights, gradients and optimizer state are the same; saved activations grow with the rows
    assert few.peak_memory_bytes == pytest.approx(whole.peak_memory_bytes, rel=0.02)
