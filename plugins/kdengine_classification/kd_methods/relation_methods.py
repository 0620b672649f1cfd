"""The relation-based methods of the zoo (losses on how samples relate to each other, not on one
sample's feature), by the name a recipe gives them (their paper's usual name)."""

from __future__ import annotations

from kdengine import LossTerm

RELATION_METHODS: dict[str, type[LossTerm]] = {}
