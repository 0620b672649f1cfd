"""The edge datasets' training views: "crop_flip" and the "strong" views of consistent teaching."""

from __future__ import annotations

import pytest
import torch


def test_strong_views_turn_the_label_with_the_image_and_change_only_the_colours():
    """``augment = "strong"``: the crop, flip and resize of "crop_flip" under the same draws, then a
    quarter turn of image and label together, then colour jitter of the image alone."""
    from kdengine_edges.transforms import train_view

    image = torch.zeros(3, 48, 64)
    image[:, 10:20, 30:50] = 1.0  # a bright block off the centre: its turn shows
    label = torch.zeros(1, 48, 64)
    label[:, 10:20, 30:50] = 1.0
    turned = 0
    for seed in range(12):
        torch.manual_seed(seed)
        plain_image, plain_label = train_view(image, label, 32, 0.8)
        torch.manual_seed(seed)
        strong_image, strong_label = train_view(image, label, 32, 0.8, "strong")
        turns = [k for k in range(4) if torch.equal(strong_label, plain_label.rot90(k, (-2, -1)))]
        assert turns, seed  # the label is the plain view's, turned
        turned += turns[0] != 0
        assert not any(torch.equal(strong_image, plain_image.rot90(k, (-2, -1))) for k in range(4))  # colours moved
        inside, outside = strong_image.mean(0)[strong_label[0] > 0], strong_image.mean(0)[strong_label[0] == 0]
        if inside.numel() and outside.numel():
            assert inside.mean() > outside.mean()  # the block is still where the label says
        assert 0.0 <= strong_image.min() and strong_image.max() <= 1.0
    assert turned > 0


def test_an_unknown_augment_is_a_located_params_error():
    from kdengine_edges.photos import PhotoFolder

    with pytest.raises(ValueError, match="augment"):
        PhotoFolder.Params(roots=["photos"], augment="heavy")
