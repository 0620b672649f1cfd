"""Super-resolution datasets.

- ``sr_folder``: a folder of HR images (DIV2K/BSDS-style); LR made on the fly (see :mod:`.degrade`).
- ``sr_paired``: Set5-style HR/LR pairs (``HR/<name>.png`` + ``LR_bicubic/X<s>/<name>x<s>.png``).
- ``skimage_sr``: photographs that ship with scikit-image, split into train, val and test images.

Train, val and test never share an image. The folder datasets take val and test from folders of
their own (``val_root``, ``test_root``) or hold them out of ``root``: the last ``test_holdout``
images by name are test, and ``val_fraction`` of the others, drawn under ``split_seed``, val.

The items themselves (train patches, whole val and test images) are in :mod:`.items`; Set5-style
trees are read by :mod:`.pairs`. :meth:`SRProvider.predict` runs tiled inference on each val and
test image. Images are decoded once and kept in memory as uint8.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.utils.data import Dataset

from kdengine import DataError, DataInfo, DatasetProvider, fraction_count, holdout
from kdengine import fingerprint_files

from .degrade import as_rgb_uint8, list_images, read_rgb
from .items import FullImageDataset, PairedDataset, PatchDataset, SRParams, collate, paired_set, too_small
from .pairs import is_paired_tree, paired_dirs, paired_files, read_pairs
from .tiling import tiled_predict

__all__ = ["SRParams", "SRProvider", "SRFolder", "SRPaired", "SkimageSR", "FullImageDataset", "PairedDataset",
           "PatchDataset", "collate", "paired_set"]


# -------------------------------------------------------------------------------------- providers


class SRProvider(DatasetProvider):
    """Shared behaviour of the super-resolution datasets: info, collate, tiled predict, figure."""

    Params = SRParams

    def info(self) -> DataInfo:
        return DataInfo(task="superres", in_channels=3, scale=self.params.scale)

    def collate_fn(self) -> Callable:
        return collate

    def predict(self, model: nn.Module, inputs):
        p = self.params
        if isinstance(inputs, (list, tuple)):
            return [tiled_predict(model, x[None], p.scale, p.tile, p.tile_overlap)[0] for x in inputs]
        return tiled_predict(model, inputs, p.scale, p.tile, p.tile_overlap)

    def sample_figure(self, models: dict[str, nn.Module], path: Path) -> Path | None:
        from .figure import draw_sr_figure

        dataset = self.test_set()
        if len(dataset) == 0:
            return None
        lr, hr = dataset[0]
        device = next((next(m.parameters()).device for m in models.values()
                       if any(True for _ in m.parameters())), torch.device("cpu"))
        outputs = {}
        with torch.inference_mode():
            for label, model in models.items():
                outputs[label] = self.predict(model, lr[None].to(device))[0].float().cpu().clamp(0, 1)
        return draw_sr_figure(lr, hr, outputs, Path(path), self.params.scale)


class HeldOutParams(SRParams):
    """Where the val and test images of a folder dataset come from."""

    root: Path
    #: Val images: a folder of their own; without it, val_fraction of root's non-test images.
    val_root: Path | None = None
    #: Test images: a folder of their own; without it, the last test_holdout images of root.
    test_root: Path | None = None
    test_holdout: int = Field(default=5, ge=1)
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    #: Seed of the val draw (a data parameter: fixed across run seeds).
    split_seed: int = 0
    #: Use at most this many of root's non-test images (sorted by name) for train and val.
    max_images: int | None = Field(default=None, ge=1)

    def folders(self) -> list[Path]:
        return [p for p in (self.root, self.val_root, self.test_root) if p is not None]

    @model_validator(mode="after")
    def _distinct_roots(self):
        given = [p.resolve() for p in self.folders()]
        if len(set(given)) != len(given):
            raise ValueError("root, val_root, test_root and extra_train_roots must be different folders")
        return self


class FolderParams(HeldOutParams):
    #: More HR folders whose images all join the train split (never val or test), e.g. BSDS500
    #: train + McMaster; the splits are still drawn from root alone.
    extra_train_roots: list[Path] = []

    def folders(self) -> list[Path]:
        return super().folders() + list(self.extra_train_roots)


def held_out(items: list, params: HeldOutParams, where: Path) -> dict[str, list]:
    """Split ``items`` (sorted by name) of ``root``: test is the last ``test_holdout`` unless
    there is a test_root, val a seeded ``val_fraction`` of the rest unless there is a val_root,
    train the others. A split that comes from its own folder is empty here."""
    items, test = list(items), []
    if params.test_root is None:
        if len(items) <= params.test_holdout:
            raise DataError(f"{where}: {len(items)} images; need more than test_holdout="
                            f"{params.test_holdout} (or give test_root)")
        items, test = items[: -params.test_holdout], items[-params.test_holdout:]
    items = items[: params.max_images]
    val = []
    if params.val_root is None:
        count = fraction_count(len(items), params.val_fraction)
        if count >= len(items):
            raise DataError(f"{where}: {len(items)} images left for train and val; too few to hold "
                            "out a val split (give val_root)")
        items, val = holdout(items, count, params.split_seed)
    return {"train": items, "val": val, "test": test}


class SRFolder(SRProvider):
    """HR image folder (DIV2K/BSDS-style) degraded on the fly; val and test from folders of their
    own or held out of it."""

    #: val_root and test_root may be Set5-style paired trees (HR/ + LR_bicubic/X<s>/) or HR folders.
    Params = FolderParams

    def check(self) -> None:
        p = self.params
        for folder in (p.root, *p.extra_train_roots):
            if not folder.is_dir():
                raise DataError(f"{folder}: HR image folder not found")
            if not list_images(folder):
                raise DataError(f"{folder}: no images (.png/.jpg/...) found")
        for folder in (p.val_root, p.test_root):
            if folder is not None:
                if is_paired_tree(folder):
                    paired_dirs(folder, p.scale)
                elif not folder.is_dir():
                    raise DataError(f"{folder}: folder not found")

    @cached_property
    def _split(self) -> dict[str, list[Path]]:
        """The files of root in each split (a split from its own folder: that folder's HR files)."""
        self.check()
        p = self.params
        split = held_out(list_images(p.root), p, p.root)
        for folder in p.extra_train_roots:
            split["train"] += list_images(folder)
        for name, folder in (("val", p.val_root), ("test", p.test_root)):
            if folder is not None and not is_paired_tree(folder):
                split[name] = list_images(folder)
        return split

    def _read(self, files: list[Path], patch: int | None = None) -> tuple[list[np.ndarray], list[Path]]:
        """The decodable images among ``files`` (at least ``patch`` px on each side, if given)
        and their files; the others go to :meth:`bad_sample`."""
        images, kept = [], []
        for path in files:
            try:
                image = read_rgb(path)
                error = too_small(image, str(path), patch) if patch else None
                if error is not None:
                    raise error
            except DataError as exc:
                self.bad_sample(exc)
                continue
            images.append(image)
            kept.append(path)
        return images, kept

    @cached_property
    def _train(self) -> Dataset:
        images, files = self._read(self._split["train"], self.params.patch)
        return PatchDataset(images, [str(f) for f in files], self.params)

    def _whole_images(self, split: str, folder: Path | None) -> Dataset:
        p = self.params
        if folder is not None and is_paired_tree(folder):
            pairs, names = read_pairs(folder, p.scale, self.bad_sample)
            return PairedDataset(pairs, names, p)
        images, files = self._read(self._split[split])
        return FullImageDataset(images, [f.stem for f in files], p)

    @cached_property
    def _val(self) -> Dataset:
        return self._whole_images("val", self.params.val_root)

    @cached_property
    def _test(self) -> Dataset:
        return self._whole_images("test", self.params.test_root)

    def train_set(self) -> Dataset:
        return self._train

    def val_set(self) -> Dataset:
        return self._val

    def test_set(self) -> Dataset:
        return self._test

    def fingerprint(self) -> dict:
        """The train, val and test images this recipe reads (a paired tree: HR and LR)."""
        p = self.params
        files = list(self._split["train"])
        for name, folder in (("val", p.val_root), ("test", p.test_root)):
            paired = folder is not None and is_paired_tree(folder)
            files += paired_files(folder, p.scale) if paired else self._split[name]
        return fingerprint_files(files)


class SRPaired(SRProvider):
    """Set5-style paired folders (HR/ + LR_bicubic/X<s>/): aligned patches of the train pairs,
    whole images for val and test, which come from paired trees of their own or are held out of
    ``root`` (train never sees them)."""

    #: root, val_root and test_root are all Set5-style paired trees.
    Params = HeldOutParams

    def check(self) -> None:
        p = self.params
        for folder in (p.root, p.val_root, p.test_root):
            if folder is not None:
                paired_dirs(folder, p.scale)

    @cached_property
    def _split(self) -> dict[str, tuple[Path, list[Path]]]:
        """Each split's paired tree and its HR files."""
        self.check()
        p = self.params
        hr_dir, _ = paired_dirs(p.root, p.scale)
        split = {name: (p.root, files) for name, files in held_out(list_images(hr_dir), p, hr_dir).items()}
        for name, folder in (("val", p.val_root), ("test", p.test_root)):
            if folder is not None:
                split[name] = (folder, list_images(paired_dirs(folder, p.scale)[0]))
        return split

    @cached_property
    def _pairs(self) -> dict[str, tuple[list, list[str]]]:
        return {name: read_pairs(root, self.params.scale, self.bad_sample, files)
                for name, (root, files) in self._split.items()}

    def fingerprint(self) -> dict:
        files = [f for root, hr in self._split.values() for f in paired_files(root, self.params.scale, hr)]
        return fingerprint_files(files)

    def train_set(self) -> Dataset:
        return PairedDataset(*self._pairs["train"], self.params, train=True)

    def val_set(self) -> Dataset:
        return PairedDataset(*self._pairs["val"], self.params)

    def test_set(self) -> Dataset:
        return PairedDataset(*self._pairs["test"], self.params)


#: scikit-image sample photographs that ship with the package (no download). The stereo
#: motorcycle pair gives "motorcycle" (left view); grey images are replicated to RGB.
SKIMAGE_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": lambda: _skimage("astronaut"),
    "motorcycle": lambda: _skimage("stereo_motorcycle")[0],
    "chelsea": lambda: _skimage("chelsea"),
    "coffee": lambda: _skimage("coffee"),
    "rocket": lambda: _skimage("rocket"),
    "hubble_deep_field": lambda: _skimage("hubble_deep_field"),
    "immunohistochemistry": lambda: _skimage("immunohistochemistry"),
    "retina": lambda: _skimage("retina"),
    "camera": lambda: _skimage("camera"),
    "brick": lambda: _skimage("brick"),
    "grass": lambda: _skimage("grass"),
    "gravel": lambda: _skimage("gravel"),
    "coins": lambda: _skimage("coins"),
    "moon": lambda: _skimage("moon"),
}


def _skimage(name: str):
    import skimage.data

    return getattr(skimage.data, name)()


class SkimageSR(SRProvider):
    """scikit-image's bundled photographs (astronaut, motorcycle, coffee, ...), degraded on the fly."""

    class Params(SRParams):
        train_images: list[str] = Field(default_factory=lambda: [
            "coffee", "rocket", "chelsea", "immunohistochemistry", "hubble_deep_field", "retina",
            "camera", "brick", "gravel",
        ], min_length=1)
        #: Two photographs neither train nor test uses (grey, replicated to RGB: every bundled
        #: colour photograph is already train or test).
        val_images: list[str] = Field(default_factory=lambda: ["coins", "moon"], min_length=1)
        #: The paper's figure images.
        test_images: list[str] = Field(default_factory=lambda: ["astronaut", "motorcycle"], min_length=1)

        @field_validator("train_images", "val_images", "test_images")
        @classmethod
        def _known(cls, names: list[str]) -> list[str]:
            unknown = [n for n in names if n not in SKIMAGE_IMAGES]
            if unknown:
                raise ValueError(f"unknown image(s) {unknown}; available: {', '.join(SKIMAGE_IMAGES)}")
            return names

        @model_validator(mode="after")
        def _disjoint(self):
            splits = {"train": self.train_images, "val": self.val_images, "test": self.test_images}
            for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
                both = set(splits[a]) & set(splits[b])
                if both:
                    raise ValueError(f"images in both {a} and {b}: {sorted(both)}")
            return self

    def check(self) -> None:
        try:
            import skimage.data  # noqa: F401
        except ImportError as exc:
            raise DataError(f"skimage_sr needs scikit-image ({exc})") from None

    @staticmethod
    def _load(names: list[str]) -> list[np.ndarray]:
        images = []
        for name in names:
            try:
                images.append(as_rgb_uint8(SKIMAGE_IMAGES[name]()))
            except Exception as exc:  # e.g. an image that would need a download
                raise DataError(f"scikit-image sample '{name}' is not available offline ({exc})") from None
        return images

    @cached_property
    def _train(self) -> Dataset:
        names = self.params.train_images
        return PatchDataset(self._load(names), names, self.params)

    def _whole_images(self, names: list[str]) -> Dataset:
        return FullImageDataset(self._load(names), names, self.params)

    @cached_property
    def _val(self) -> Dataset:
        return self._whole_images(self.params.val_images)

    @cached_property
    def _test(self) -> Dataset:
        return self._whole_images(self.params.test_images)

    def train_set(self) -> Dataset:
        return self._train

    def val_set(self) -> Dataset:
        return self._val

    def test_set(self) -> Dataset:
        return self._test

    def fingerprint(self) -> str:
        from importlib.metadata import version

        p = self.params
        return (f"skimage_sr: scikit-image={version('scikit-image')}, train_images={p.train_images}, "
                f"val_images={p.val_images}, test_images={p.test_images}")
