"""Top-k accuracy through torchmetrics."""

from __future__ import annotations

from torchmetrics.classification import MulticlassAccuracy

from kdengine import DataInfo, KDEngineError, Metric


class _TopK(Metric):
    k = 1

    def build(self, info: DataInfo):
        if not info.num_classes:
            raise KDEngineError(f"top-{self.k} accuracy needs a dataset with classes")
        return MulticlassAccuracy(num_classes=info.num_classes, top_k=min(self.k, info.num_classes), average="micro")


class Top1(_TopK):
    """Top-1 accuracy (fraction of samples whose highest-scoring class is right)."""

    k = 1


class Top5(_TopK):
    """Top-5 accuracy (fraction of samples whose label is among the five highest scores)."""

    k = 5
