"""Atomic writes and safe loading of checkpoints."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from kdengine import CheckpointError
from kdengine.io.atomic import atomic_write
from kdengine.io.weights import load_weights, read_state_dict, save_weights


def test_save_and_load_round_trip(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    load_weights(other, path)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left behind


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def explode(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, explode)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_architecture_mismatch_names_file_and_keys(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(nn.Linear(3, 4), path)
    with pytest.raises(CheckpointError) as info:
        load_weights(nn.Linear(3, 5), path)
    text = str(info.value)
    assert str(path) in text and "shape mismatches" in text and "weight: checkpoint (4, 3), model (5, 3)" in text
    with pytest.raises(CheckpointError, match="missing keys"):
        load_weights(nn.Sequential(nn.Linear(3, 4)), path)


def test_mismatch_names_the_first_missing_and_unexpected_keys_and_the_shapes(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(4), "head.weight": torch.zeros(2, 4),
                "extra.a": torch.zeros(1), "extra.b": torch.zeros(1)}, path)
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    text = str(info.value)
    assert text.startswith(f"{path}: checkpoint does not match the architecture")
    assert "2 missing keys (e.g. 1.weight, 1.bias)" in text
    assert "3 unexpected keys (e.g. head.weight, extra.a, extra.b)" in text
    assert "0.weight: checkpoint (4, 3), model (5, 3)" in text and "0.bias: checkpoint (4,), model (5,)" in text


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "state_dict_ema"])
def test_wrapped_state_dicts_load(tmp_path, key):
    source = _model()
    path = tmp_path / "w.pt"
    torch.save({key: source.state_dict(), "epoch": 7, "optimizer": {"lr": torch.tensor(0.1)}}, path)
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_weights(target, path)
    _assert_same(source, target)


def test_ema_weights_are_preferred_as_timm_does(tmp_path):
    plain, ema = _model(), nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    path = tmp_path / "w.pth"
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict()}, path)
    target = _model()
    load_weights(target, path)
    _assert_same(ema, target)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_data_parallel_module_prefix_is_stripped(tmp_path, suffix):
    from safetensors.torch import save_file

    source = _model()
    wrapped = nn.DataParallel(source)  # keys "module.0.weight", ... as a DDP/DataParallel run saves them
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"model": wrapped.state_dict()}, path)
    else:
        save_file({k: v.contiguous() for k, v in wrapped.state_dict().items()}, str(path))
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_weights(target, path)
    _assert_same(source, target)


def test_a_prefix_that_only_some_keys_carry_is_kept(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, path)
    assert set(read_state_dict(path)) == {"module.a", "b"}


def test_hub_style_timm_safetensors_load_through_the_factory(tmp_path):
    """A model.safetensors as timm publishes on the Hub loads as a teacher.checkpoint."""
    import timm
    from safetensors.torch import save_file

    from kdengine import DataInfo
    from kdengine_classification.models import TimmModel

    source = timm.create_model("test_resnet", num_classes=10).eval()
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    model = TimmModel({"model": "test_resnet"}).load(path, DataInfo("classification", 3, 10)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_a_dict_without_a_state_dict_names_its_keys(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "best": 0.5}, path)
    with pytest.raises(CheckpointError, match=r"does not hold a state dict of tensors \(its keys: epoch, best\)"):
        read_state_dict(path)


def test_plain_torch_state_dict_loads_with_weights_only(tmp_path):
    model = nn.Linear(2, 2)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    state = read_state_dict(path)
    assert set(state) == {"weight", "bias"}


class Payload:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused to load: .*\((posix|nt)\.system\)"):
        read_state_dict(path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_state_dict(bad)
