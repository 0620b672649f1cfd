"""What every edge dataset provider shares: DataInfo, batching, prediction and the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdengine import DataInfo, DatasetProvider

from kdengine_edges.figure import draw_sample_figure
from kdengine_edges.transforms import PAD, collate_edges, split_targets

#: Rows of the sample figure.
FIGURE_ROWS = 4


class EdgeProvider(DatasetProvider):
    """Base of the edge datasets; subclasses implement ``train_set``/``val_set``/``test_set``/``check``."""

    def info(self) -> DataInfo:
        return DataInfo(task="edges", in_channels=3, num_classes=1)

    def collate_fn(self) -> Callable:
        return collate_edges

    def teacher_labels(self, teacher_output, targets):
        """The teacher's edge map thresholded at probability 0.5, as a 1xHxW target per row (or as
        the mask and the one annotator of a multi-annotator target)."""
        edges = (teacher_output.float() >= 0).to(torch.float32)  # logit 0 is probability 0.5
        if isinstance(targets, dict):  # one annotator, the rest padding, as the batch's other rows are padded
            annotators = torch.full((edges.shape[0], targets["annotators"].shape[1], *edges.shape[2:]), PAD,
                                    dtype=targets["annotators"].dtype, device=edges.device)
            annotators[:, :1] = edges
            return {"mask": edges.to(targets["mask"].dtype), "annotators": annotators}
        return edges.to(targets.dtype)

    def predict(self, model: nn.Module, inputs):
        """Logits of a batch; a list of images of different sizes is predicted one image at a time."""
        if isinstance(inputs, (list, tuple)):
            return [model(image[None])[0] for image in inputs]
        return model(inputs)

    def sample_figure(self, models: dict[str, nn.Module], path: Path) -> Path | None:
        """The first test images as they are (a portrait image stays portrait)."""
        dataset = self.test_set()
        samples = []
        for index in range(min(FIGURE_ROWS, len(dataset))):
            image, target = dataset[index]
            mask, _ = split_targets({k: v[None] for k, v in target.items()}
                                    if isinstance(target, dict) else target[None])
            samples.append((image, mask[0]))
        if not samples:
            return None
        return draw_sample_figure(samples, models, self.predict, path)
