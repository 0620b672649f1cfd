"""The feature- and relation-based methods of the zoo, by the name a recipe gives them (their paper's usual name)."""

from __future__ import annotations

from kdengine import LossTerm
from kdengine_classification.kd_methods.ft import FactorTransfer
from kdengine_classification.kd_methods.ofd import OverhaulFeature
from kdengine_classification.kd_methods.reviewkd import ReviewKD
from kdengine_classification.kd_methods.vid import VariationalInformation

FEATURE_METHODS: dict[str, type[LossTerm]] = {
    "vid": VariationalInformation,
    "ofd": OverhaulFeature,
    "ft": FactorTransfer,
    "reviewkd": ReviewKD,
}
