import numpy as np
import pytest
import torch
from PIL import Image

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


def test_pairs_by_name_and_holds_out_an_eval_split(tmp_path):
    root = make_folder(tmp_path)
    data = EdgeFolder(params(root, eval_fraction=0.2))
    data.check()
    train, evalset = data.train_set(), data.eval_set()
    assert len(train) == 4 and len(evalset) == 1
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


def test_eval_folders_come_in_pairs(tmp_path):
    with pytest.raises(Exception):
        EdgeFolder(params(tmp_path, eval_images=tmp_path))
