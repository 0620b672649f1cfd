"""``teacher.freeze_backbone_epochs``: a fine-tuning stage trains only the classifier head for its
first epochs, then the whole model.

A head that is freshly initialised for the dataset's classes sends large, nearly random gradients
into the pretrained backbone in the first steps; training the head alone first lets it settle on
the pretrained features before they are changed (Kumar et al. 2022, "Fine-Tuning can Distort
Pretrained Features", linear probing then fine-tuning).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdengine.errors import KDEngineError

#: Where the classifier head is found on models without timm's ``get_classifier()``
#: (torchvision: ``fc`` for ResNets, ``classifier`` for MobileNets, ``head``/``heads`` for ViTs).
HEAD_NAMES = ("fc", "classifier", "head", "heads")


def classifier_of(model: nn.Module) -> nn.Module | None:
    """The model's classifier head: timm's ``get_classifier()``, or a child with a usual name."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else next(
        (getattr(model, name) for name in HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module)), None)
    return head if head is not None and any(True for _ in head.parameters()) else None


class BackboneFreeze:
    """Freezes everything but the head (its weights, and its batch-norm statistics) while the
    epoch is one of the first ``epochs``; call :meth:`start_epoch` after ``model.train()``.

    The optimizer is built over every parameter before the first epoch starts (the backbone is
    frozen only then); a frozen parameter gets no gradient, and optimizers skip parameters without
    one (no update, no weight decay)."""

    def __init__(self, model: nn.Module, epochs: int, where: str, num_processes: int = 1):
        self.epochs = epochs
        self.backbone: list[nn.Parameter] = []
        self.norms: list[nn.Module] = []
        if not epochs:
            return
        if num_processes > 1:
            raise KDEngineError(f"{where}: freeze_backbone_epochs works with one process only (DDP expects a "
                                "gradient for every parameter it was given); run without --num-processes")
        head = classifier_of(model)
        if head is None:
            raise KDEngineError(f"{where}: freeze_backbone_epochs: cannot find the classifier head of "
                                f"{type(model).__name__} (no get_classifier(), and no child named "
                                f"{', '.join(HEAD_NAMES)})")
        in_head = {id(p) for p in head.parameters()}
        head_modules = {id(m) for m in head.modules()}
        self.backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in in_head]
        self.norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and id(m) not in head_modules]

    def hold_statistics(self) -> None:
        """Keep the backbone's batch-norm statistics as they are until the next ``train()``."""
        for norm in self.norms:
            norm.eval()

    def start_epoch(self, epoch: int) -> None:
        if not self.epochs:
            return
        frozen = epoch <= self.epochs
        for param in self.backbone:
            param.requires_grad_(not frozen)
        if frozen:
            self.hold_statistics()
