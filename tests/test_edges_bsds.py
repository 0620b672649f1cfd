import urllib.error

import numpy as np
import pytest
import torch

from kdengine import DataError
from kdengine_edges import bsds
from kdengine_edges.bsds import BSDS500, training_target
from kdengine_edges.readers import read_bsds_boundaries
from kdengine_edges.transforms import collate_edges

from edges_fakes import boundary_maps, make_bsds, write_image, write_mat


@pytest.fixture(autouse=True)
def _fresh_cache():
    bsds.load_split.cache_clear()
    yield
    bsds.load_split.cache_clear()


def provider(root, **params):
    return BSDS500({"root": root, "size": 16, **params})


def test_reads_the_official_mat_layout(tmp_path):
    maps = boundary_maps(10, 12, 4, seed=0)
    write_mat(tmp_path / "a.mat", maps)
    read = read_bsds_boundaries(tmp_path / "a.mat")
    assert read.shape == (4, 10, 12) and read.dtype == bool
    np.testing.assert_array_equal(read, maps.astype(bool))


def test_train_items_are_random_crops_of_the_requested_size(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    data = provider(root)
    data.check()
    train = data.train_set()
    assert len(train) == 4  # train + val by default
    image, target = train[0]
    assert image.shape == (3, 16, 16) and target.shape == (1, 16, 16)
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert 0 <= target.min() and target.max() <= 1
    assert data.info().task == "edges" and data.info().num_classes == 1


def test_eval_items_keep_every_annotator_at_native_size_landscape(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    evalset = provider(root).eval_set()
    assert len(evalset) == 2  # test split
    shapes = set()
    for index in range(len(evalset)):
        image, target = evalset[index]
        assert image.shape[1:] == (24, 36)  # the portrait one is transposed
        assert target["annotators"].shape[1:] == (24, 36)
        shapes.add(target["annotators"].shape[0])
        assert target["mask"].shape == (1, 24, 36)
    assert shapes == {3, 4}
    inputs, targets = collate_edges([evalset[0], evalset[1]])
    assert inputs.shape == (2, 3, 24, 36)
    assert targets["annotators"].shape == (2, 4, 24, 36)
    # the missing fourth annotator of the first image is padding (-1), never an edge map
    assert (targets["annotators"][0, 3] == -1).all()


def test_eval_split_and_limit_are_configurable(tmp_path):
    root = make_bsds(tmp_path / "BSDS500", per_split=3)
    data = provider(root, train_splits=["train"], eval_splits=["val", "test"], eval_limit=4)
    assert len(data.train_set()) == 3
    assert len(data.eval_set()) == 4


def test_targets_mean_and_consensus():
    annotators = torch.tensor([[[1, 0, 1]], [[1, 0, 0]], [[1, 1, 0]], [[0, 0, 0]]])
    assert torch.allclose(training_target(annotators, "mean", 0.5),
                          torch.tensor([[[0.75, 0.25, 0.25]]]))
    assert torch.equal(training_target(annotators, "consensus", 0.5),
                       torch.tensor([[[1.0, 0.0, 0.0]]]))
    assert torch.equal(training_target(annotators, "consensus", 0.25),
                       torch.tensor([[[1.0, 1.0, 1.0]]]))


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        provider(tmp_path / "nowhere").check()


def test_missing_mat_names_the_file(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    (root / "groundTruth" / "test" / "2001.mat").unlink()
    with pytest.raises(DataError, match="2001.mat"):
        provider(root).eval_set()


def test_unreadable_image_names_the_file(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    (root / "images" / "train" / "0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="0000.jpg"):
        provider(root).train_set()


def test_unreadable_mat_names_the_file(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    (root / "groundTruth" / "val" / "1000.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match="1000.mat"):
        provider(root).train_set()


def test_mismatched_sizes_name_the_file(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    write_image(root / "images" / "test" / "2000.jpg", 30, 30, seed=1)
    with pytest.raises(DataError, match="2000"):
        provider(root).eval_set()


def test_download_offline_fails_clearly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(bsds.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not be downloaded"):
        provider(tmp_path / "BSDS500", download=True).check()


def test_params_are_validated(tmp_path):
    with pytest.raises(Exception):
        BSDS500({"root": tmp_path, "target": "median"})
    with pytest.raises(Exception):
        BSDS500({"root": tmp_path, "eval_splits": []})
