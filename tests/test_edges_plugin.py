"""The plugin as the engine sees it: registration, the figure, the recipes."""

from pathlib import Path

import pytest
import torch

import kdengine_edges
from kdengine import DatasetProvider, LossTerm, Metric, ModelFactory, load_recipe
from kdengine_edges.synthetic_data import SyntheticEdges
from kdengine_edges.transforms import collate_edges

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def registered(hook):
    found = {}
    getattr(kdengine_edges, hook)(lambda name, cls: found.setdefault(name, cls))
    return found


def test_every_hook_registers_the_documented_components():
    assert set(registered("register_teachers")) == {"unet"}
    assert set(registered("register_students")) == {"unet"}
    assert set(registered("register_datasets")) == {"bsds500", "synthetic_edges", "edge_folder", "photo_folder"}
    assert set(registered("register_loss_terms")) == {"weighted_bce", "sigmoid_mse", "balanced_bce",
                                                        "soft_bce", "pixel_kl", "cwd"}
    assert set(registered("register_metrics")) == {"dice", "ods_ois"}
    bases = {"register_teachers": ModelFactory, "register_students": ModelFactory,
             "register_datasets": DatasetProvider, "register_loss_terms": LossTerm,
             "register_metrics": Metric}
    for hook, base in bases.items():
        assert all(issubclass(cls, base) for cls in registered(hook).values())


class Blur(torch.nn.Module):
    """A stand-in edge model: one trainable conv."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_sample_figure_writes_a_png(tmp_path):
    data = SyntheticEdges({"size": 32, "train_size": 2, "test_size": 3})
    models = {"teacher": Blur().eval(), "scratch": Blur().eval(), "distilled": Blur().eval()}
    path = data.sample_figure(models, tmp_path / "figure.png")
    assert path == tmp_path / "figure.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_batches_flow_through_predict_and_metrics():
    data = SyntheticEdges({"size": 32, "train_size": 2, "test_size": 4})
    inputs, targets = collate_edges([data.test_set()[i] for i in range(4)])
    metrics = [registered("register_metrics")[n]({"thresholds": 5} if n == "ods_ois" else {})
               .build(data.info()) for n in ("dice", "ods_ois")]
    outputs = data.predict(Blur().eval(), inputs)
    for metric in metrics:
        metric.update(outputs, targets)
    values = [metric.compute() for metric in metrics]
    assert 0.0 <= float(values[0]) <= 1.0
    assert set(values[1]) == {"ods", "ois"}


@pytest.mark.parametrize("name", ["edge.toml", "edge-bsds500.toml"])
def test_recipes_load(name):
    recipe = load_recipe(RECIPES / name)
    assert recipe.teacher.name == "unet" and recipe.student.name == "unet"
    assert [loss.name for loss in recipe.loss] == ["weighted_bce", "sigmoid_mse"]
