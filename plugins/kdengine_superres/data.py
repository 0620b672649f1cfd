"""Super-resolution datasets.

- ``sr_folder``: a folder of HR images (DIV2K/BSDS-style); LR made on the fly (see :mod:`.degrade`).
- ``sr_paired``: Set5-style HR/LR pairs (``HR/<name>.png`` + ``LR_bicubic/X<s>/<name>x<s>.png``).
- ``skimage_sr``: photographs that ship with scikit-image, split into train, val and test images.

Train, val and test never share an image. The folder datasets take val and test from folders of
their own (``val_root``, ``test_root``) or hold them out of ``root``: the last ``test_holdout``
images by name are test, and ``val_fraction`` of the others, drawn under ``split_seed``, val.

Train items are random HR patches (``patch`` px, random flips and 90 degree rotations) with their
LR; val and test items are full (mod-cropped) images, so batches of images of different sizes come
as lists (see :func:`collate`) and :meth:`SRProvider.predict` runs tiled inference on each.
Images are decoded once and kept in memory as uint8.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.utils.data import Dataset

from kdengine import DataError, DataInfo, DatasetProvider, Params, fraction_count, holdout
from kdengine import fingerprint_files

from .degrade import as_rgb_uint8, degrade, list_images, mod_crop, read_rgb, to_tensor
from .tiling import tiled_predict


class SRParams(Params):
    scale: int = Field(default=4, ge=2, le=8)
    #: HR patch side for training (LR patches are patch / scale).
    patch: int = Field(default=160, ge=16)
    #: "blur_bicubic": Gaussian blur (blur_sigma) then bicubic; "bicubic": bicubic only.
    degradation: Literal["blur_bicubic", "bicubic"] = "blur_bicubic"
    blur_sigma: float = Field(default=1.0, ge=0.0, le=5.0)
    #: Random patches drawn per train image per epoch.
    patches_per_image: int = Field(default=16, ge=1)
    #: Random horizontal/vertical flips and transposition of train patches.
    augment: bool = True
    #: Tiled inference on val and test images: LR tile side and overlap, in LR pixels (0 = whole image).
    tile: int = Field(default=96, ge=0)
    tile_overlap: int = Field(default=8, ge=0)

    @model_validator(mode="after")
    def _patch_fits_scale(self):
        if self.patch % self.scale:
            raise ValueError(f"patch ({self.patch}) must be a multiple of scale ({self.scale})")
        if self.tile and self.tile_overlap * 2 >= self.tile:
            raise ValueError("tile_overlap must be less than half of tile")
        return self

    @property
    def sigma(self) -> float:
        return self.blur_sigma if self.degradation == "blur_bicubic" else 0.0


# --------------------------------------------------------------------------------------- datasets


def too_small(image: np.ndarray, name: str, patch: int) -> DataError | None:
    """The error for a training image smaller than the patch, or None."""
    if min(image.shape[:2]) < patch:
        return DataError(f"{name}: image {image.shape[1]}x{image.shape[0]} is smaller than "
                         f"the {patch} px training patch")
    return None


class PatchDataset(Dataset):
    """Random HR patches of in-memory images, degraded on the fly: (LR, HR) in [0, 1]."""

    def __init__(self, images: list[np.ndarray], names: list[str], params: SRParams):
        self.images = images
        self.params = params
        for image, name in zip(images, names):
            error = too_small(image, name, params.patch)
            if error is not None:
                raise error

    def __len__(self) -> int:
        return len(self.images) * self.params.patches_per_image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image = self.images[index % len(self.images)]
        p = self.params.patch
        top = int(torch.randint(0, image.shape[0] - p + 1, ()))
        left = int(torch.randint(0, image.shape[1] - p + 1, ()))
        hr = to_tensor(image[top: top + p, left: left + p])
        if self.params.augment:
            flips = torch.rand(3)
            if flips[0] < 0.5:
                hr = hr.flip(-1)
            if flips[1] < 0.5:
                hr = hr.flip(-2)
            if flips[2] < 0.5:
                hr = hr.transpose(-1, -2)
        hr = hr.contiguous()
        return degrade(hr, self.params.scale, self.params.sigma), hr


class FullImageDataset(Dataset):
    """Whole images (mod-cropped to the scale); LR made by the same degradation, deterministic."""

    def __init__(self, images: list[np.ndarray], names: list[str], params: SRParams):
        self.images = [mod_crop(image, params.scale) for image in images]
        self.names = names
        self.params = params

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr = to_tensor(self.images[index])
        return degrade(hr, self.params.scale, self.params.sigma), hr


class PairedDataset(Dataset):
    """Given (LR, HR) uint8 pairs; train mode draws aligned random patches, eval mode whole images."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], names: list[str], params: SRParams,
                 train: bool = False):
        self.pairs = pairs
        self.names = names
        self.params = params
        self.train = train

    def __len__(self) -> int:
        return len(self.pairs) * (self.params.patches_per_image if self.train else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        lr, hr = self.pairs[index % len(self.pairs)]
        if not self.train:
            return to_tensor(lr), to_tensor(hr)
        s, p = self.params.scale, self.params.patch // self.params.scale
        top = int(torch.randint(0, max(1, lr.shape[0] - p + 1), ()))
        left = int(torch.randint(0, max(1, lr.shape[1] - p + 1), ()))
        lr_t = to_tensor(lr[top: top + p, left: left + p])
        hr_t = to_tensor(hr[top * s: (top + p) * s, left * s: (left + p) * s])
        if self.params.augment:
            flips = torch.rand(3)
            for axis, flip in ((-1, flips[0]), (-2, flips[1])):
                if flip < 0.5:
                    lr_t, hr_t = lr_t.flip(axis), hr_t.flip(axis)
            if flips[2] < 0.5:
                lr_t, hr_t = lr_t.transpose(-1, -2), hr_t.transpose(-1, -2)
        return lr_t.contiguous(), hr_t.contiguous()


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]):
    """Stack same-size items; images of different sizes stay lists (predict and metrics take both)."""
    inputs, targets = zip(*batch)
    if all(x.shape == inputs[0].shape for x in inputs) and all(y.shape == targets[0].shape for y in targets):
        return torch.stack(inputs), torch.stack(targets)
    return list(inputs), list(targets)


def read_pair(hr_path: Path, lr_dir: Path, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """One (LR, HR) pair, HR cropped to scale x LR; any problem is a DataError naming the file."""
    candidates = [p for p in lr_dir.glob(f"{hr_path.stem}x{scale}.*") if p.suffix.lower() in
                  (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")]
    if not candidates:
        raise DataError(f"{lr_dir / (hr_path.stem + f'x{scale}.png')}: LR image for {hr_path} not found")
    lr = read_rgb(candidates[0])
    hr = read_rgb(hr_path)
    height, width = lr.shape[0] * scale, lr.shape[1] * scale
    if not (height <= hr.shape[0] < height + scale and width <= hr.shape[1] < width + scale):
        raise DataError(f"{candidates[0]}: LR size {lr.shape[1]}x{lr.shape[0]} does not match "
                        f"{hr_path} ({hr.shape[1]}x{hr.shape[0]}) at x{scale}")
    return lr, np.ascontiguousarray(hr[:height, :width])


def read_pairs(root: Path, scale: int, bad_sample: Callable[[DataError], None] | None = None,
               hr_files: list[Path] | None = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read a Set5-style tree: ``HR/<name>.<ext>`` with ``LR_bicubic/X<s>/<name>x<s>.<ext>`` (only
    the pairs of ``hr_files``, when given). A bad pair raises its DataError, or goes to
    ``bad_sample`` and is left out."""
    hr_dir, lr_dir = paired_dirs(root, scale)
    pairs, names = [], []
    for hr_path in list_images(hr_dir) if hr_files is None else hr_files:
        try:
            pairs.append(read_pair(hr_path, lr_dir, scale))
        except DataError as exc:
            if bad_sample is None:
                raise
            bad_sample(exc)
            continue
        names.append(hr_path.stem)
    if not pairs:
        raise DataError(f"{hr_dir}: no HR images found")
    return pairs, names


def paired_set(root: Path, scale: int) -> Dataset:
    """Every (LR, HR) pair of a Set5-style tree as whole images: a benchmark set, for scoring
    outside a run (in a run it is the test_root of ``sr_folder`` or ``sr_paired``)."""
    return PairedDataset(*read_pairs(Path(root), scale), SRParams(scale=scale, patch=16 * scale))


def paired_files(root: Path, scale: int, hr_files: list[Path] | None = None) -> list[Path]:
    """The images of a Set5-style tree at one scale (HR and LR; only the pairs of ``hr_files``,
    when given), for the data fingerprint."""
    hr_dir, lr_dir = paired_dirs(root, scale)
    if hr_files is None:
        return list_images(hr_dir) + list_images(lr_dir)
    stems = {f"{p.stem}x{scale}" for p in hr_files}
    return list(hr_files) + [p for p in list_images(lr_dir) if p.stem in stems]


def paired_dirs(root: Path, scale: int) -> tuple[Path, Path]:
    root = Path(root)
    hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
    for folder in (root, hr_dir, lr_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (expected HR/ and LR_bicubic/X{scale}/ under {root})")
    return hr_dir, lr_dir


def is_paired_tree(root: Path) -> bool:
    return (Path(root) / "HR").is_dir() and (Path(root) / "LR_bicubic").is_dir()


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
