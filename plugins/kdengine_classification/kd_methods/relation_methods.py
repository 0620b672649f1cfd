"""The relation-based methods of the zoo (losses on how samples relate to each other, not on one
sample's feature), by the name a recipe gives them (their paper's usual name)."""

from __future__ import annotations

from kdengine import LossTerm
from kdengine_classification.kd_methods.nst import NeuronSelectivityTransfer
from kdengine_classification.kd_methods.pkt import ProbabilisticKT
from kdengine_classification.kd_methods.rkd import RelationalKD
from kdengine_classification.kd_methods.sp import SimilarityPreserving

RELATION_METHODS: dict[str, type[LossTerm]] = {
    "rkd": RelationalKD,
    "pkt": ProbabilisticKT,
    "sp": SimilarityPreserving,
    "nst": NeuronSelectivityTransfer,
}
