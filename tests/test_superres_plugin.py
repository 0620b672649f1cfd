"""The plugin's registrations, the sample figure, and the recipes that ship with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdengine.plugins.catalog import get_catalog
from kdengine_superres.figure import detailed_crop, draw_sr_figure

ROOT = Path(__file__).resolve().parents[1]


def test_everything_is_registered_under_its_name():
    catalog = get_catalog(refresh=True)
    assert {"swinir", "attention_srnet", "spandrel"} <= set(catalog.names("teacher"))
    assert {"swinir", "attention_srnet"} <= set(catalog.names("student"))
    assert {"sr_folder", "sr_paired", "skimage_sr"} <= set(catalog.names("dataset"))
    assert {"l1", "teacher_l1", "feature_match", "perceptual"} <= set(catalog.names("loss"))
    assert {"psnr_y", "ssim_y", "psnr"} <= set(catalog.names("metric"))
    assert catalog.get("loss", "feature_match").needs_teacher
    assert catalog.get("loss", "teacher_l1").needs_teacher
    assert not catalog.get("loss", "perceptual").needs_teacher


def test_detailed_crop_finds_the_textured_corner():
    hr = torch.zeros(3, 64, 64)
    hr[:, 40:, 40:] = torch.rand(3, 24, 24)
    top, left = detailed_crop(hr, 16)
    assert top >= 32 and left >= 32


def test_sample_figure_is_written(tmp_path):
    hr = torch.rand(3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(hr[None], 4)[0]
    outputs = {"teacher": hr.clone(), "scratch": hr * 0.9, "distilled": hr * 0.95}
    path = draw_sr_figure(lr, hr, outputs, tmp_path / "samples.png", scale=4, crop=16)
    assert path.is_file() and path.stat().st_size > 1000


@pytest.mark.parametrize("name", ["sr.toml", "sr-paper.toml"])
def test_recipes_validate_their_shape(name, tmp_path, monkeypatch):
    from kdengine import RecipeError, load_recipe

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = ROOT / "recipes" / name
    if name == "sr.toml":
        recipe = load_recipe(path)
        assert recipe.data.name == "skimage_sr" and recipe.student.name == "attention_srnet"
    else:
        # Without VGG weights the paper recipe stops at validation, saying where they go.
        with pytest.raises(RecipeError, match="vgg19-dcbb9e9d.pth"):
            load_recipe(path)


@pytest.mark.parametrize("name", ["sr.toml", "sr-paper.toml"])
def test_sr_recipes_distil_a_larger_teacher_into_a_smaller_student_with_the_paper_loss(name):
    import tomllib

    from kdengine import DataInfo

    with open(ROOT / "recipes" / name, "rb") as handle:
        recipe = tomllib.load(handle)  # read raw: the paper recipe's validation needs VGG weights
    catalog = get_catalog()
    info = DataInfo(task="superres", in_channels=3, scale=4)
    sizes = {}
    for role in ("teacher", "student"):
        spec = recipe[role]
        model = catalog.get(role, spec["name"])(spec.get("params", {})).build(info)
        sizes[role] = sum(p.numel() for p in model.parameters())
    assert sizes["teacher"] > 2 * sizes["student"]
    assert recipe["student"]["params"]["blocks"] == 12  # the paper's 12 attention blocks
    names = [loss["name"] for loss in recipe["loss"]]
    assert names[0] == "l1" and "feature_match" in names
    assert ("perceptual" in names) == (name == "sr-paper.toml")
    assert recipe["train"]["baseline"]  # the scratch student, same budget, for the comparison


def test_bf16_sr_run_swinir_teacher_to_attention_student(tmp_path, one_thread):
    """End to end in bf16: the SR eval set degrades whole images in the main process (a blur
    convolution), which must stay float32 while the models run under autocast; feature matching
    pairs SwinIR tokens with CNN maps."""
    import kdengine

    recipe = {
        "run": {"name": "sr-bf16", "seed": 0},
        "data": {"name": "skimage_sr", "params": {
            "scale": 4, "patch": 32, "patches_per_image": 2, "degradation": "blur_bicubic",
            "train_images": ["coffee", "chelsea"], "val_images": ["coins"], "test_images": ["camera"]}},
        "teacher": {"name": "swinir", "params": {"size": "tiny"}, "train": {"epochs": 1}},
        "student": {"name": "attention_srnet", "params": {"blocks": 2, "channels": 8}},
        "train": {"epochs": 1, "batch_size": 2, "eval_batch_size": 1, "mixed_precision": "bf16",
                  "optimizer": {"name": "adam", "lr": 1e-3}, "baseline": False, "monitor": "psnr_y"},
        "loss": [{"name": "l1"}, {"name": "teacher_l1", "weight": 0.5},
                 {"name": "feature_match", "weight": 0.1,
                  "params": {"student_layers": ["body.1"], "teacher_layers": ["layers.1"]}}],
        "metric": [{"name": "psnr_y", "params": {"scale": 4}}],
    }
    results = kdengine.run(recipe, output_dir=tmp_path, progress=False)
    for stage in ("teacher", "distilled"):
        psnr = results.stage(stage).best["psnr_y"]
        assert 5.0 < psnr < 60.0, (stage, psnr)
    assert "feature_match" in results.stage("distilled").history[0].losses
