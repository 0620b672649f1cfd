import urllib.error

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kdengine import DataError
from kdengine_edges import bsds
from kdengine_edges.bsds import BSDS500
from kdengine_edges.readers import read_bsds_boundaries
from kdengine_edges.metrics import BoundaryF, DiceScore
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
    assert len(train) == 2  # the train split only
    image, target = train[0]
    assert image.shape == (3, 16, 16) and target.shape == (1, 16, 16)
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert 0 <= target.min() and target.max() <= 1
    assert data.info().task == "edges" and data.info().num_classes == 1


def names(dataset) -> list[str]:
    return [record.name for record in dataset.records]


def test_train_val_and_test_are_the_official_splits(tmp_path):
    root = make_bsds(tmp_path / "BSDS500", per_split=3)
    data = provider(root)
    # make_bsds names images <split index><number>: train 0xxx, val 1xxx, test 2xxx
    assert names(data.train_set()) == ["0000", "0001", "0002"]
    assert names(data.val_set()) == ["1000", "1001", "1002"]
    assert names(data.test_set()) == ["2000", "2001", "2002"]


def test_test_items_keep_every_annotator_at_native_size_and_orientation(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    testset = provider(root).test_set()
    assert len(testset) == 2
    shapes = []
    for index in range(len(testset)):
        image, target = testset[index]
        assert target["annotators"].shape[1:] == image.shape[1:] == target["mask"].shape[1:]
        shapes.append((tuple(image.shape[1:]), target["annotators"].shape[0]))
    assert shapes == [((24, 36), 3), ((36, 24), 4)]  # the second image is portrait, and stays so


def test_same_size_items_stack_and_pad_the_annotator_count(tmp_path):
    root = make_bsds(tmp_path / "BSDS500", per_split=3)
    testset = provider(root).test_set()  # the first two images are landscape
    inputs, targets = collate_edges([testset[0], testset[1]])
    assert inputs.shape == (2, 3, 24, 36)
    assert targets["annotators"].shape == (2, 4, 24, 36)
    # the missing fourth annotator of the first image is padding (-1), never an edge map
    assert (targets["annotators"][0, 3] == -1).all()


class Corner(torch.nn.Module):
    """A model whose output depends on where a pixel lies: it would notice a transpose or padding."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 5, padding=2)

    def forward(self, x):
        rows = torch.linspace(-2, 2, x.shape[-2]).view(-1, 1)
        return self.conv(x) + rows


def test_portrait_and_landscape_images_are_scored_as_they_are(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    data = provider(root)
    testset = data.test_set()
    inputs, targets = data.collate_fn()([testset[0], testset[1]])
    assert isinstance(inputs, list) and [tuple(i.shape) for i in inputs] == [(3, 24, 36), (3, 36, 24)]
    torch.manual_seed(0)
    model = Corner().eval()
    with torch.no_grad():
        outputs = data.predict(model, inputs)
    assert [tuple(o.shape) for o in outputs] == [(1, 24, 36), (1, 36, 24)]
    batched = [DiceScore(), BoundaryF(n_thresholds=5)]
    alone = [DiceScore(), BoundaryF(n_thresholds=5)]
    for metric in batched:
        metric.update(outputs, targets)
    # the same metrics fed one image at a time, as batches of one at its own size
    for image, target in (testset[0], testset[1]):
        with torch.no_grad():
            logits = model(image[None])
        for metric in alone:
            metric.update(logits, {k: v[None] for k, v in target.items()})
    assert float(batched[0].compute()) == float(alone[0].compute())
    assert {k: float(v) for k, v in batched[1].compute().items()} == \
        {k: float(v) for k, v in alone[1].compute().items()}


def test_the_sample_figure_shows_portrait_images_upright(tmp_path, monkeypatch):
    import matplotlib.axes

    root = make_bsds(tmp_path / "BSDS500")
    shown = []
    original = matplotlib.axes.Axes.imshow

    def imshow(self, pixels, *args, **kwargs):
        shown.append(pixels.shape[:2])
        return original(self, pixels, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    path = provider(root).sample_figure({"teacher": Corner().eval()}, tmp_path / "figure.png")
    assert path.is_file()
    # rows: the landscape then the portrait test image; columns: input, ground truth, teacher
    assert shown == [(24, 36)] * 3 + [(36, 24)] * 3


def test_val_and_test_limits_and_scales_are_their_own(tmp_path):
    root = make_bsds(tmp_path / "BSDS500", per_split=3)
    data = provider(root, val_limit=1, val_scale=0.5, test_limit=2)
    assert len(data.train_set()) == 3 and len(data.val_set()) == 1 and len(data.test_set()) == 2
    assert data.val_set()[0][0].shape[1:] == (12, 18) and data.test_set()[0][0].shape[1:] == (24, 36)


def test_splits_are_configurable(tmp_path):
    root = make_bsds(tmp_path / "BSDS500", per_split=2)
    data = provider(root, train_splits=["val"], val_splits=["train"])
    assert names(data.train_set()) == ["1000", "1001"] and names(data.val_set()) == ["0000", "0001"]


def test_a_split_in_two_roles_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="'val' split is in both train_splits and val_splits"):
        provider(tmp_path, train_splits=["train", "val"])
    with pytest.raises(ValidationError, match="'test' split is in both val_splits and test_splits"):
        provider(tmp_path, val_splits=["test"])


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        provider(tmp_path / "nowhere").check()


def test_missing_mat_names_the_file(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    (root / "groundTruth" / "test" / "2001.mat").unlink()
    with pytest.raises(DataError, match="2001.mat"):
        provider(root).test_set()


def test_unreadable_image_names_the_file(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    (root / "images" / "train" / "0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="0000.jpg"):
        provider(root).train_set()


def test_unreadable_mat_names_the_file(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    (root / "groundTruth" / "val" / "1000.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match="1000.mat"):
        provider(root).val_set()


def test_mismatched_sizes_name_the_file(tmp_path):
    root = make_bsds(tmp_path / "BSDS500")
    write_image(root / "images" / "test" / "2000.jpg", 30, 30, seed=1)
    with pytest.raises(DataError, match="2000"):
        provider(root).test_set()


def test_download_offline_fails_clearly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(bsds.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not be downloaded"):
        provider(tmp_path / "BSDS500", download=True).check()


def test_params_are_validated(tmp_path):
    with pytest.raises(ValidationError, match="target"):
        BSDS500({"root": tmp_path, "target": "median"})
    with pytest.raises(ValidationError, match="at least one split"):
        BSDS500({"root": tmp_path, "test_splits": []})
