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
    assert str(path) in text and "shape mismatches" in text and "weight (4, 3) vs (5, 3)" in text
    with pytest.raises(CheckpointError, match="missing keys"):
        load_weights(nn.Sequential(nn.Linear(3, 4)), path)


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
    with pytest.raises(CheckpointError, match="refused to load"):
        read_state_dict(path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_state_dict(bad)
