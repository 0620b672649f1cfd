"""The CIFAR ResNets of the distillation benchmarks (cifar_resnet): sizes, taps, recipe errors."""

from __future__ import annotations

import pytest
import torch

from kdengine import DataInfo, KDEngineError
from kdengine.plugins.features import FeatureTaps

CIFAR100 = DataInfo(task="classification", num_classes=100)


def build(depth, widths="x1", info=CIFAR100):
    from kdengine.plugins.catalog import get_catalog

    return get_catalog().get("student", "cifar_resnet")({"depth": depth, "widths": widths}).build(info)


# the parameter counts the benchmark tables print for CIFAR-100 (CRD, Tian et al. 2020: 1.23M and 7.43M)
@pytest.mark.parametrize("depth,widths,millions", [(8, "x4", 1.23), (32, "x4", 7.43), (20, "x1", 0.28),
                                                   (56, "x1", 0.86), (110, "x1", 1.74)])
def test_the_published_sizes(depth, widths, millions):
    model = build(depth, widths)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == depth - 1


def test_stage_shapes_and_a_pre_activation_tap():
    model = build(8, "x4").eval()
    paths = ["layer1", "layer2", "layer3", "layer3.0.preact", "flatten"]
    taps = FeatureTaps(model, paths, role="student")
    logits = model(torch.randn(2, 3, 32, 32))
    features = taps.collect()
    taps.close()
    assert logits.shape == (2, 100)
    assert [tuple(features[p].shape) for p in paths] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8),
                                                         (2, 256, 8, 8), (2, 256)]
    preact, out = features["layer3.0.preact"], features["layer3"]
    assert preact.min() < 0 and torch.equal(out, preact.clamp(min=0))  # the sum before its ReLU, kept intact


def test_widths_may_be_given_as_numbers_and_take_grey_images():
    model = build(14, [8, 8, 16, 32], DataInfo(task="classification", in_channels=1, num_classes=10))
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 10) and model.conv1.in_channels == 1


@pytest.mark.parametrize("params,needle", [({"depth": 10}, "6n + 2"), ({"depth": 8, "widths": "x2"}, "'x2'"),
                                           ({"depth": 8, "widths": [16, 32]}, "four positive numbers")])
def test_bad_params_are_named_with_their_field(tiny_recipe, params, needle):
    from kdengine.recipe import load_recipe

    tiny_recipe["student"] = {"name": "cifar_resnet", "params": params}
    with pytest.raises(KDEngineError) as failure:
        load_recipe(tiny_recipe)
    assert "student.params" in str(failure.value) and needle in str(failure.value)


def test_a_dataset_without_classes_is_refused():
    with pytest.raises(KDEngineError, match="needs a dataset with classes"):
        build(8, "x4", DataInfo(task="edges"))
