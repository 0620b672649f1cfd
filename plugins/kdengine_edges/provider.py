"""What every edge dataset provider shares: DataInfo, batching, prediction and the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from kdengine import DataInfo, DatasetProvider

from kdengine_edges.figure import draw_sample_figure
from kdengine_edges.transforms import collate_edges, split_targets

#: Rows of the sample figure.
FIGURE_ROWS = 4


class EdgeProvider(DatasetProvider):
    """Base of the edge datasets; subclasses implement ``train_set``/``val_set``/``test_set``/``check``."""

    def info(self) -> DataInfo:
        return DataInfo(task="edges", in_channels=3, num_classes=1)

    def collate_fn(self) -> Callable:
        return collate_edges

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
