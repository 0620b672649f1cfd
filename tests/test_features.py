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


class SometimesBranch(nn.Module):
    """A model whose ``branch`` runs only on batches whose inputs sum above zero."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = self.stem(x)
        if x.sum() > 0:
            h = self.branch(h)
        return h.mean(dim=(2, 3))


def test_taps_are_cleared_before_every_forward():
    net = SometimesBranch()
    taps = FeatureTaps(net, ["branch", "stem"], role="student")
    net(torch.ones(2, 3, 4, 4))
    assert set(taps.features) == {"branch", "stem"}
    net(-torch.ones(2, 3, 4, 4))  # the branch does not run: its feature of the last batch is gone
    assert set(taps.features) == {"stem"}
    with pytest.raises(KDEngineError, match=r"student module 'branch' did not run"):
        taps.collect()


def test_a_tapped_module_that_did_not_run_is_an_error_not_a_stale_tensor():
    from kdengine.plugins.components import LossTerm
    from kdengine.teacher.precision import InferenceSetting, TeacherRunner
    from kdengine.train.objective import StudentObjective

    class Tapping(LossTerm):
        def forward(self, ctx):
            return ctx.student_features["branch"].mean()

    objective = StudentObjective(SometimesBranch(), [Tapping()], ["branch"])
    _, values = objective(torch.ones(2, 3, 4, 4), None)
    assert values[0].requires_grad
    with pytest.raises(KDEngineError, match=r"student module 'branch' did not run"):
        objective(-torch.ones(2, 3, 4, 4), None)

    teacher = SometimesBranch().eval()
    runner = TeacherRunner(teacher, FeatureTaps(teacher, ["branch"], role="teacher"), InferenceSetting("no", False))
    _, features = runner(torch.ones(2, 3, 4, 4))
    assert set(features) == {"branch"}
    with pytest.raises(KDEngineError, match=r"teacher module 'branch' did not run"):
        runner(-torch.ones(2, 3, 4, 4))
