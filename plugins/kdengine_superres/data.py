"""Super-resolution datasets.

- ``sr_folder``: a folder of HR images (DIV2K/BSDS-style); LR made on the fly (see :mod:`.degrade`).
- ``sr_paired``: Set5-style HR/LR pairs (``HR/<name>.png`` + ``LR_bicubic/X<s>/<name>x<s>.png``).
- ``skimage_sr``: photographs that ship with scikit-image, split into train and eval images.

Train items are random HR patches (``patch`` px, random flips and 90 degree rotations) with their
LR; eval items are full (mod-cropped) images, so batches of eval images of different sizes come as
lists (see :func:`collate`) and :meth:`SRProvider.predict` runs tiled inference on each.
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

from kdengine import DataError, DataInfo, DatasetProvider, Params
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
    #: Tiled inference on eval images: LR tile side and overlap, in LR pixels (0 = whole image).
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
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read a Set5-style tree: ``HR/<name>.<ext>`` with ``LR_bicubic/X<s>/<name>x<s>.<ext>``.
    A bad pair raises its DataError, or goes to ``bad_sample`` and is left out."""
    hr_dir, lr_dir = paired_dirs(root, scale)
    pairs, names = [], []
    for hr_path in list_images(hr_dir):
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


def paired_files(root: Path, scale: int) -> list[Path]:
    """Every image of a Set5-style tree at one scale (HR and LR), for the data fingerprint."""
    hr_dir, lr_dir = paired_dirs(root, scale)
    return list_images(hr_dir) + list_images(lr_dir)


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

        dataset = self.eval_set()
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


class SRFolder(SRProvider):
    """HR image folder (DIV2K/BSDS-style) degraded on the fly; eval from eval_root or held-out images."""

    class Params(SRParams):
        root: Path
        #: Eval images: a Set5-style paired tree (HR/ + LR_bicubic/X<s>/) or another HR folder.
        eval_root: Path | None = None
        #: Without eval_root, the last ``holdout`` images of root (sorted by name) are the eval split.
        holdout: int = Field(default=5, ge=1)
        #: Use at most this many train images (sorted by name), for quick runs.
        max_images: int | None = Field(default=None, ge=1)

    def check(self) -> None:
        p = self.params
        if not p.root.is_dir():
            raise DataError(f"{p.root}: HR image folder not found")
        if not list_images(p.root):
            raise DataError(f"{p.root}: no images (.png/.jpg/...) found")
        if p.eval_root is not None:
            if is_paired_tree(p.eval_root):
                paired_dirs(p.eval_root, p.scale)
            elif not p.eval_root.is_dir():
                raise DataError(f"{p.eval_root}: eval folder not found")

    @cached_property
    def _split(self) -> tuple[list[Path], list[Path]]:
        self.check()
        files = list_images(self.params.root)
        if self.params.eval_root is None:
            if len(files) <= self.params.holdout:
                raise DataError(f"{self.params.root}: {len(files)} images; need more than holdout="
                                f"{self.params.holdout} (or give eval_root)")
            files, held = files[: -self.params.holdout], files[-self.params.holdout:]
        else:
            held = [] if is_paired_tree(self.params.eval_root) else list_images(self.params.eval_root)
        if self.params.max_images:
            files = files[: self.params.max_images]
        return files, held

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
        images, files = self._read(self._split[0], self.params.patch)
        return PatchDataset(images, [str(f) for f in files], self.params)

    def train_set(self) -> Dataset:
        return self._train

    @cached_property
    def _eval(self) -> Dataset:
        p = self.params
        if p.eval_root is not None and is_paired_tree(p.eval_root):
            pairs, names = read_pairs(p.eval_root, p.scale, self.bad_sample)
            return PairedDataset(pairs, names, p)
        images, held = self._read(self._split[1])
        return FullImageDataset(images, [f.stem for f in held], p)

    def eval_set(self) -> Dataset:
        return self._eval

    def fingerprint(self) -> dict:
        """The train and eval images this recipe reads (a paired eval tree: HR and LR)."""
        files, held = self._split
        p = self.params
        if p.eval_root is not None and is_paired_tree(p.eval_root):
            held = paired_files(p.eval_root, p.scale)
        return fingerprint_files(files + held)


class SRPaired(SRProvider):
    """Set5-style paired folder (HR/ + LR_bicubic/X<s>/): whole images for eval, aligned patches for train."""

    class Params(SRParams):
        root: Path

    def check(self) -> None:
        paired_dirs(self.params.root, self.params.scale)

    @cached_property
    def _pairs(self):
        return read_pairs(self.params.root, self.params.scale, self.bad_sample)

    def fingerprint(self) -> dict:
        return fingerprint_files(paired_files(self.params.root, self.params.scale), self.params.root)

    def train_set(self) -> Dataset:
        return PairedDataset(*self._pairs, self.params, train=True)

    def eval_set(self) -> Dataset:
        return PairedDataset(*self._pairs, self.params)


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
        #: The paper's figure images.
        eval_images: list[str] = Field(default_factory=lambda: ["astronaut", "motorcycle"], min_length=1)

        @field_validator("train_images", "eval_images")
        @classmethod
        def _known(cls, names: list[str]) -> list[str]:
            unknown = [n for n in names if n not in SKIMAGE_IMAGES]
            if unknown:
                raise ValueError(f"unknown image(s) {unknown}; available: {', '.join(SKIMAGE_IMAGES)}")
            return names

        @model_validator(mode="after")
        def _disjoint(self):
            both = set(self.train_images) & set(self.eval_images)
            if both:
                raise ValueError(f"images in both train and eval: {sorted(both)}")
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

    @cached_property
    def _eval(self) -> Dataset:
        names = self.params.eval_images
        return FullImageDataset(self._load(names), names, self.params)

    def train_set(self) -> Dataset:
        return self._train

    def eval_set(self) -> Dataset:
        return self._eval

    def fingerprint(self) -> str:
        from importlib.metadata import version

        p = self.params
        return f"skimage_sr: scikit-image={version('scikit-image')}, train_images={p.train_images}, eval_images={p.eval_images}"
