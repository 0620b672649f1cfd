"""The logit-based methods of the zoo, by the name a recipe gives them (their paper's usual name)."""

from __future__ import annotations

from kdengine import LossTerm
from kdengine_classification.kd_methods.ctkd import CurriculumTemperatureKD
from kdengine_classification.kd_methods.dkd import DecoupledKD
from kdengine_classification.kd_methods.mlkd import MultiLevelKD
from kdengine_classification.kd_methods.nkd import NormalizedKD

LOGIT_METHODS: dict[str, type[LossTerm]] = {
    "dkd": DecoupledKD,
    "mlkd": MultiLevelKD,
    "ctkd": CurriculumTemperatureKD,
    "nkd": NormalizedKD,
}
