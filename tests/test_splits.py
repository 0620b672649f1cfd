"""Seeded hold-outs (kdengine.holdout) and the three-split contract of DatasetProvider."""

from __future__ import annotations

import pytest

from kdengine import DataError, DataInfo, DatasetProvider, MissingSplitError, fraction_count, holdout
from kdengine.errors import located


def test_holdout_is_disjoint_sized_ordered_and_seeded():
    items = [f"img{i:02d}" for i in range(40)]
    kept, held = holdout(items, 7, seed=0)
    assert len(held) == 7 and len(kept) == 33
    assert set(kept) | set(held) == set(items) and not set(kept) & set(held)
    assert kept == sorted(kept) and held == sorted(held)  # both keep the order of items
    assert holdout(items, 7, seed=0) == (kept, held)
    assert holdout(items, 7, seed=1)[1] != held
    assert holdout(items, 0, seed=0) == (items, [])


def test_holdout_refuses_more_than_there_is():
    with pytest.raises(ValueError, match="cannot hold out 4 of 3"):
        holdout([1, 2, 3], 4, seed=0)


def test_fraction_count_rounds_and_holds_out_at_least_one():
    assert fraction_count(100, 0.1) == 10
    assert fraction_count(5, 0.1) == 1
    assert fraction_count(45, 0.25) == 11


class TrainAndTestOnly(DatasetProvider):
    def info(self):
        return DataInfo(task="classification", num_classes=2)

    def train_set(self):
        return [1, 2]

    def test_set(self):
        return [3]


def test_a_provider_without_val_raises_missing_split_naming_its_class():
    with pytest.raises(MissingSplitError, match="TrainAndTestOnly has no validation split") as caught:
        TrainAndTestOnly().val_set()
    assert isinstance(caught.value, DataError)


def test_missing_split_keeps_its_type_when_located_in_the_recipe():
    with pytest.raises(MissingSplitError, match=r"^recipe\.toml: data: TrainAndTestOnly has no validation"):
        with located("recipe.toml", "data"):
            TrainAndTestOnly().val_set()
