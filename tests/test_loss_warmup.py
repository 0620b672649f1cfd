"""A loss term's weight warm-up (``[[loss]] warmup_epochs``, DKD's 20 epochs on CIFAR-100)."""

from __future__ import annotations

import pytest

from kdengine.recipe import LossSpec
from kdengine.train.objective import warmed_up


def test_the_weight_rises_linearly_then_stays():
    specs = [LossSpec(name="dkd", weight=2.0, warmup_epochs=4), LossSpec(name="cross_entropy", weight=1.0)]
    assert [warmed_up([2.0, 1.0], specs, epoch)[0] for epoch in (1, 2, 3, 4, 5, 40)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert all(warmed_up([2.0, 1.0], specs, epoch)[1] == 1.0 for epoch in (1, 7))


def test_a_negative_warmup_is_refused(tiny_recipe):
    from kdengine.errors import KDEngineError
    from kdengine.recipe import load_recipe

    tiny_recipe["loss"][0]["warmup_epochs"] = -1
    with pytest.raises(KDEngineError, match=r"loss\[0\].warmup_epochs"):
        load_recipe(tiny_recipe)


def test_a_run_trains_each_epoch_on_the_warmed_up_weights(tiny_recipe, tmp_path, one_thread):
    import kdengine

    tiny_recipe["train"].update(epochs=3, baseline=False)
    tiny_recipe["loss"] = [{"name": "kl_div", "weight": 0.9, "params": {"temperature": 4.0}, "warmup_epochs": 2},
                           {"name": "cross_entropy", "weight": 0.1}]
    results = kdengine.run(tiny_recipe, progress=False, output_dir=tmp_path)
    history = next(s for s in results.stages if s.stage == "distilled").history
    for record, share in zip(history, (0.5, 1.0, 1.0)):
        losses = record.losses
        assert losses["total"] == pytest.approx(0.9 * share * losses["kl_div"] + 0.1 * losses["cross_entropy"],
                                                rel=1e-4), record.epoch
