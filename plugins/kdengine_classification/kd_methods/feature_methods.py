"""The feature- and relation-based methods of the zoo, by the name a recipe gives them (their paper's usual name)."""

from __future__ import annotations

from kdengine import LossTerm

FEATURE_METHODS: dict[str, type[LossTerm]] = {}
