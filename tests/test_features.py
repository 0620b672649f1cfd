"""Feature taps by module path, token reshaping and adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdengine import KDEngineError
from kdengine.plugins.features import FeatureTaps, as_feature_map, list_layers, make_adapter


def model():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1)))


def test_taps_capture_outputs_and_close():
    net = model()
    taps = FeatureTaps(net, ["0", "2.0"])
    net(torch.randn(2, 3, 8, 8))
    assert taps.features["0"].shape == (2, 4, 8, 8)
    assert taps.features["2.0"].shape == (2, 6, 4, 4)
    taps.close()
    net(torch.randn(2, 3, 8, 8))
    assert taps.features == {}


def test_unknown_path_suggests_close_names():
    with pytest.raises(KDEngineError, match=r"student has no module '2\.1'.*Did you mean '2\.0'"):
        FeatureTaps(model(), ["2.1"], role="student")


def test_list_layers_reports_shapes_in_call_order():
    layers = list_layers(model(), torch.randn(1, 3, 8, 8))
    assert [l[0] for l in layers] == ["0", "1", "2.0", "2"]
    assert layers[2] == ("2.0", "Conv2d", (1, 6, 4, 4))


def test_tokens_become_maps():
    tokens = torch.arange(2 * 6 * 5, dtype=torch.float32).reshape(2, 6, 5)  # (B, H*W, C)
    fmap = as_feature_map(tokens, (2, 3))
    assert fmap.shape == (2, 5, 2, 3)
    assert fmap[1, 4, 1, 2] == tokens[1, 5, 4]
    assert as_feature_map(torch.zeros(1, 16, 3)).shape == (1, 3, 4, 4)
    with pytest.raises(KDEngineError):
        as_feature_map(torch.zeros(1, 15, 3))


def test_adapter_maps_channels():
    assert isinstance(make_adapter(8, 8), nn.Identity)
    adapter = make_adapter(8, 16)
    assert adapter(torch.zeros(1, 8, 3, 3)).shape == (1, 16, 3, 3)
