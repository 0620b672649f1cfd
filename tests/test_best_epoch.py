"""The best epoch is chosen among finite monitored values: a diverged epoch's NaN cannot pin it."""

from __future__ import annotations

import math

import pytest

from kdengine.train.evaluate import is_better

NAN = math.nan


@pytest.mark.parametrize("higher", [True, False])
def test_a_nan_is_never_best_and_any_finite_value_beats_it(higher):
    assert not is_better(NAN, None, higher) and not is_better(NAN, 0.5, higher)
    assert is_better(0.1, NAN, higher) and is_better(0.1, None, higher)
    assert is_better(0.9, 0.5, higher) is higher and is_better(math.inf, 0.5, higher) is False


def nan_in_epochs(monkeypatch, epochs: set[int]) -> None:
    """The distilled stage's val metrics are NaN in the given epochs, as if they had diverged."""
    from kdengine.train.stage import EpochKeeper

    real = EpochKeeper.keep

    def keep(self, record, *args):
        if self.plan.name == "distilled" and record.epoch in epochs:
            record.metrics = {k: NAN for k in record.metrics}
        return real(self, record, *args)

    monkeypatch.setattr(EpochKeeper, "keep", keep)


def test_a_nan_first_epoch_leaves_the_choice_to_the_later_epochs(tiny_recipe, tmp_path, monkeypatch, one_thread):
    import kdengine

    tiny_recipe["train"].update(epochs=3, baseline=False)
    nan_in_epochs(monkeypatch, {1})
    stage = kdengine.run(tiny_recipe, progress=False, output_dir=tmp_path).stages[-1]
    assert math.isnan(stage.history[0].metrics["top1"])
    assert stage.best_epoch in (2, 3) and math.isfinite(stage.best["top1"]) and math.isfinite(stage.test_best["top1"])


def test_a_metric_never_finite_stops_with_a_clear_error(tiny_recipe, tmp_path, monkeypatch, one_thread):
    import kdengine
    from kdengine.errors import TrainingError

    tiny_recipe["train"].update(epochs=2, baseline=False)
    nan_in_epochs(monkeypatch, {1, 2})
    with pytest.raises(TrainingError, match="top1 was not finite in any evaluated epoch"):
        kdengine.run(tiny_recipe, progress=False, output_dir=tmp_path)
