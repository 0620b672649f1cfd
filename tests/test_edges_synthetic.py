import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kdengine_edges.synthetic import boundaries, render
from kdengine_edges.synthetic_data import SyntheticEdges


def test_boundaries_are_exact_and_on_the_upper_region():
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[2:4, 2:4] = 1
    expected = np.zeros((6, 6), dtype=bool)
    expected[2:4, 2:4] = True  # every pixel of the 2x2 square touches the background
    np.testing.assert_array_equal(boundaries(labels), expected)
    labels[:, :] = 0
    labels[:, 3:] = 1
    edge = boundaries(labels)
    assert edge[:, 3].all() and edge.sum() == 6


def test_render_is_deterministic_and_seed_dependent():
    args = dict(size=32, shapes=(2, 4), noise=0.05, low_contrast=0.3, strokes=2)
    a_img, a_edge = render(0, "train", 3, **args)
    b_img, b_edge = render(0, "train", 3, **args)
    c_img, _ = render(1, "train", 3, **args)
    d_img, _ = render(0, "test", 3, **args)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_edge, b_edge)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)
    assert a_img.shape == (32, 32, 3) and a_img.dtype == np.float32
    assert 0.0 <= a_img.min() and a_img.max() <= 1.0
    assert a_edge.dtype == bool


def test_provider_splits_shapes_and_determinism():
    data = SyntheticEdges({"size": 32, "train_size": 6, "val_size": 2, "test_size": 3})
    train, evalset = data.train_set(), data.test_set()
    assert len(train) == 6 and len(data.val_set()) == 2 and len(evalset) == 3
    image, target = train[0]
    assert image.shape == (3, 32, 32) and target.shape == (1, 32, 32)
    assert set(torch.unique(target).tolist()) <= {0.0, 1.0}
    image, target = evalset[1]
    assert set(target) == {"mask", "annotators"}
    assert target["annotators"].shape == (1, 32, 32)
    again = SyntheticEdges({"size": 32, "train_size": 6, "test_size": 3}).test_set()[1]
    assert torch.equal(again[0], image) and torch.equal(again[1]["mask"], target["mask"])
    # boundaries are a minority of the pixels but there are some in most images
    share = torch.stack([evalset[i][1]["mask"] for i in range(3)]).mean()
    assert 0.01 < share < 0.3


def test_train_augmentation_keeps_image_and_target_aligned():
    data = SyntheticEdges({"size": 32, "train_size": 2, "val_size": 1, "test_size": 1, "noise": 0.0})
    base_image, base_edge = data._split("train", 2)
    torch.manual_seed(0)
    for _ in range(8):
        image, target = data.train_set()[0]
        # the augmentation is one of the square's symmetries, applied to both
        candidates = []
        for flip_w in (False, True):
            for flip_h in (False, True):
                for transpose in (False, True):
                    i, t = base_image[0], base_edge[0]
                    if flip_w:
                        i, t = i.flip(-1), t.flip(-1)
                    if flip_h:
                        i, t = i.flip(-2), t.flip(-2)
                    if transpose:
                        i, t = i.transpose(-1, -2), t.transpose(-1, -2)
                    candidates.append((i, t))
        assert any(torch.equal(image, i) and torch.equal(target, t) for i, t in candidates)


def test_val_has_its_own_stream_disjoint_from_train_and_test():
    params = {"size": 32, "train_size": 4, "val_size": 4, "test_size": 4}
    data = SyntheticEdges(params)
    images = {split: [item[0] for item in getattr(data, f"{split}_set")()] for split in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not any(torch.equal(x, y) for x in images[a] for y in images[b]), (a, b)
    again = SyntheticEdges(params).val_set()
    assert all(torch.equal(again[i][0], images["val"][i]) for i in range(4))
    other = SyntheticEdges({**params, "seed": 1}).val_set()
    assert not torch.equal(other[0][0], images["val"][0])


def test_test_images_come_from_stream_1():
    # the stream recipes/edge.toml's measured results are on
    data = SyntheticEdges({"size": 32, "train_size": 1, "test_size": 2, "seed": 3})
    image, _ = render(3, "test", 1, 32, (3, 7), 0.05, 0.3, 3)
    from kdengine_edges import synthetic

    assert synthetic._SPLIT_IDS["test"] == 1
    torch.testing.assert_close(data.test_set()[1][0], torch.from_numpy(image).permute(2, 0, 1))


def test_params_are_validated():
    with pytest.raises(ValidationError, match="size"):
        SyntheticEdges({"size": 8})
    with pytest.raises(ValidationError, match="min_shapes"):
        SyntheticEdges({"min_shapes": 5, "max_shapes": 2})
    with pytest.raises(ValidationError, match="colour"):
        SyntheticEdges({"colour": "red"})


def test_label_miss_drops_whole_outlines_from_training_labels_only():
    exact = SyntheticEdges({"size": 32, "train_size": 8, "test_size": 2})
    partial = SyntheticEdges({"size": 32, "train_size": 8, "test_size": 2, "label_miss": 0.5})
    (img_a, edge_a), (img_b, edge_b) = exact._split("train", 8), partial._split("train", 8)
    torch.testing.assert_close(img_a, img_b)  # the images do not depend on the labels' noise
    assert bool((edge_b <= edge_a).all()) and edge_b.sum() < edge_a.sum()
    # val and test keep every exact boundary
    assert torch.equal(exact.test_set()[1][1]["mask"], partial.test_set()[1][1]["mask"])
    assert torch.equal(exact.val_set()[1][1]["mask"], partial.val_set()[1][1]["mask"])


def test_annotator_boundaries_remove_a_region_outline():
    from kdengine_edges.synthetic import annotator_boundaries

    labels = np.zeros((8, 8), dtype=np.int32)
    labels[1:4, 1:4] = 1
    labels[5:7, 5:7] = 2
    np.testing.assert_array_equal(annotator_boundaries(labels, 0, "train", 0, 0.0),
                                  boundaries(labels))
    kept = annotator_boundaries(labels, 0, "train", 0, 0.999)
    assert not kept.any()
