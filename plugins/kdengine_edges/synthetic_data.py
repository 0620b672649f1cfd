"""``synthetic_edges``: the offline default dataset (see :mod:`kdengine_edges.synthetic`)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from pydantic import Field, model_validator

from kdengine import Params
from kdengine import describe_params

from kdengine_edges.provider import EdgeProvider
from kdengine_edges.synthetic import annotator_boundaries, boundaries, scene
from kdengine_edges.transforms import eval_target


@lru_cache(maxsize=8)
def _generate(seed, split, count, size, shapes, noise, low_contrast, strokes, label_miss=0.0):
    images, edges = [], []
    for index in range(count):
        image, labels = scene(seed, split, index, size, shapes, noise, low_contrast, strokes)
        images.append(image)
        edges.append(annotator_boundaries(labels, seed, split, index, label_miss)
                     if label_miss > 0 else boundaries(labels))
    images_t = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    edges_t = torch.from_numpy(np.stack(edges)).unsqueeze(1).float()
    return images_t, edges_t


class SyntheticEdgeSet(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, edges: torch.Tensor, train: bool):
        self.images, self.edges, self.train = images, edges, train

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, edge = self.images[index], self.edges[index]
        if not self.train:
            return image, eval_target(edge, edge)
        # the eight symmetries of the square keep boundaries exact
        if torch.rand(()).item() < 0.5:
            image, edge = image.flip(-1), edge.flip(-1)
        if torch.rand(()).item() < 0.5:
            image, edge = image.flip(-2), edge.flip(-2)
        if torch.rand(()).item() < 0.5:
            image, edge = image.transpose(-1, -2), edge.transpose(-1, -2)
        return image.contiguous(), edge.contiguous()


class SyntheticEdges(EdgeProvider):
    """Procedural textured shapes with exact boundaries; no download, seeded, fast."""

    summary = "procedural shapes/textures/noise with exact boundaries (offline default)"

    class Params(Params):
        size: int = Field(64, ge=16, le=1024, description="image side in pixels")
        train_size: int = Field(256, ge=1, description="number of training images")
        val_size: int = Field(64, ge=1, description="number of validation images")
        test_size: int = Field(64, ge=1, description="number of test images")
        seed: int = Field(0, ge=0, description="data seed (fixed across run seeds)")
        min_shapes: int = Field(3, ge=0)
        max_shapes: int = Field(7, ge=0)
        noise: float = Field(0.05, ge=0.0, le=1.0, description="std of the sensor noise")
        low_contrast: float = Field(0.3, ge=0.0, le=1.0,
                                    description="share of shapes nearly the colour beneath")
        strokes: int = Field(3, ge=0, description="at most this many non-boundary strokes")
        label_miss: float = Field(
            0.0, ge=0.0, lt=1.0,
            description="training labels only: chance that the (simulated) annotator leaves a "
            "region's outline out, as BSDS annotators do; val and test always use every boundary",
        )

        @model_validator(mode="after")
        def _shape_range(self):
            if self.min_shapes > self.max_shapes:
                raise ValueError("min_shapes must not exceed max_shapes")
            return self

    def _split(self, split: str, count: int):
        p = self.params
        miss = p.label_miss if split == "train" else 0.0
        return _generate(p.seed, split, count, p.size, (p.min_shapes, p.max_shapes), p.noise,
                         p.low_contrast, p.strokes, miss)

    def train_set(self) -> torch.utils.data.Dataset:
        return SyntheticEdgeSet(*self._split("train", self.params.train_size), train=True)

    def val_set(self) -> torch.utils.data.Dataset:
        return SyntheticEdgeSet(*self._split("val", self.params.val_size), train=False)

    def test_set(self) -> torch.utils.data.Dataset:
        return SyntheticEdgeSet(*self._split("test", self.params.test_size), train=False)

    def fingerprint(self) -> str:
        """Generated data: the parameters that generate it."""
        return describe_params("synthetic_edges", self.params)
