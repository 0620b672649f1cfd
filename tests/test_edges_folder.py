import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from kdengine import DataError
from kdengine_edges import folder as folder_module
from kdengine_edges.folder import EdgeFolder

from edges_fakes import write_image


@pytest.fixture(autouse=True)
def _fresh_cache():
    folder_module._load.cache_clear()
    yield
    folder_module._load.cache_clear()


def write_mask(path, height, width):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 2, :] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def make_folder(root, count=5, height=20, width=28):
    for i in range(count):
        write_image(root / "images" / f"im{i}.png", height, width, seed=i)
        write_mask(root / "edges" / f"im{i}.png", height, width)
    return root


def params(root, **extra):
    return {"train_images": root / "images", "train_edges": root / "edges", "size": 16, **extra}


def test_pairs_by_name_and_holds_out_val_and_test_splits(tmp_path):
    root = make_folder(tmp_path)
    data = EdgeFolder(params(root, test_fraction=0.2, val_fraction=0.25))
    data.check()
    train, evalset = data.train_set(), data.test_set()
    assert len(train) == 3 and len(data.val_set()) == 1 and len(evalset) == 1
    image, target = train[0]
    assert image.shape == (3, 16, 16) and target.shape == (1, 16, 16)
    assert set(torch.unique(target).tolist()) <= {0.0, 1.0} and target.max() == 1.0
    image, target = evalset[0]
    assert image.shape == (3, 20, 28) and target["annotators"].shape == (1, 20, 28)


def test_missing_mask_names_the_image(tmp_path):
    root = make_folder(tmp_path)
    (root / "edges" / "im3.png").unlink()
    with pytest.raises(DataError, match="im3.png"):
        EdgeFolder(params(root)).train_set()


def test_mismatched_sizes_name_the_file(tmp_path):
    root = make_folder(tmp_path)
    write_mask(root / "edges" / "im2.png", 10, 10)
    with pytest.raises(DataError, match="im2.png"):
        EdgeFolder(params(root)).train_set()


def test_unreadable_image_names_the_file(tmp_path):
    root = make_folder(tmp_path)
    (root / "images" / "im1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="im1.png"):
        EdgeFolder(params(root)).train_set()


def test_missing_folder_is_reported_by_check(tmp_path):
    with pytest.raises(DataError, match="images"):
        EdgeFolder(params(tmp_path)).check()


def test_val_and_test_folders_come_in_pairs(tmp_path):
    with pytest.raises(ValidationError, match="val_images and val_edges"):
        EdgeFolder(params(tmp_path, val_images=tmp_path / "v"))
    with pytest.raises(ValidationError, match="test_images and test_edges"):
        EdgeFolder(params(tmp_path, test_edges=tmp_path / "t"))
    with pytest.raises(ValidationError, match="different folders"):
        EdgeFolder(params(tmp_path, test_images=tmp_path / "images", test_edges=tmp_path / "e"))


def _images(dataset) -> list[torch.Tensor]:
    return [image for image, _ in dataset.items]


def _which(dataset, pool) -> set[int]:
    """The indices in ``pool`` of the images of ``dataset``."""
    return {next(i for i, p in enumerate(pool) if torch.equal(p, image)) for image in _images(dataset)}


def test_held_out_splits_are_disjoint_seeded_and_test_is_last_by_name(tmp_path):
    root = make_folder(tmp_path, count=10)
    data = EdgeFolder(params(root, test_fraction=0.2, val_fraction=0.25))
    pool = [image for (image, _), _ in data._items(root / "images", root / "edges")]  # sorted by name
    train, val, test = (_which(s, pool) for s in (data.train_set(), data.val_set(), data.test_set()))
    assert test == {8, 9} and len(val) == 2 and len(train) == 6
    assert not (train & val) and train | val | test == set(range(10))
    assert _which(EdgeFolder(params(root, test_fraction=0.2, val_fraction=0.25)).val_set(), pool) == val
    assert _which(EdgeFolder(params(root, test_fraction=0.2, val_fraction=0.25, split_seed=5)).val_set(), pool) != val


def test_val_and_test_folders_are_used_when_given(tmp_path):
    root = make_folder(tmp_path / "train", count=3)
    val = make_folder(tmp_path / "val", count=2, height=22)
    test = make_folder(tmp_path / "test", count=1, height=24)
    data = EdgeFolder(params(root, val_images=val / "images", val_edges=val / "edges",
                             test_images=test / "images", test_edges=test / "edges"))
    data.check()
    assert len(data.train_set()) == 3
    assert [image.shape[1] for image in _images(data.val_set())] == [22, 22]
    assert [image.shape[1] for image in _images(data.test_set())] == [24]


def test_too_few_images_to_hold_out_is_a_data_error(tmp_path):
    root = make_folder(tmp_path, count=2)
    with pytest.raises(DataError, match="too few images"):
        EdgeFolder(params(root)).train_set()


def test_split_files_name_the_held_out_images_so_a_transfer_set_cannot_hold_them(tmp_path):
    from kdengine.train.transfer import refuse_overlap

    root = make_folder(tmp_path, count=10)
    data = EdgeFolder(params(root, test_fraction=0.2, val_fraction=0.25))
    files = {split: data.split_files(split) for split in ("train", "val", "test")}
    assert [len(files[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(files["train"] + files["val"] + files["test"]) == sorted((root / "images").iterdir())
    assert files["test"] == sorted((root / "images").iterdir())[8:]  # held out last by name
    refuse_overlap(files["train"], data, "data.transfer", "edge_folder")  # train images are fine
    with pytest.raises(DataError, match="is the val image"):
        refuse_overlap(files["val"][:1], data, "data.transfer", "edge_folder")
