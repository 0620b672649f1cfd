"""Feature- and relation-based distillation methods, one module per paper.

Each term reads what it needs from :class:`kdengine.LossContext`: logits, or intermediate features
tapped by module path (``named_modules`` names, see ``kdengine layers``), so it works on any timm or
torchvision teacher and student without editing them.
"""

from kdengine_classification.kd_methods.attention import AttentionTransfer
from kdengine_classification.kd_methods.crd import ContrastiveRepresentation
from kdengine_classification.kd_methods.dist import DIST
from kdengine_classification.kd_methods.fitnets import FitNets

__all__ = ["AttentionTransfer", "ContrastiveRepresentation", "DIST", "FitNets"]
