"""Classification datasets: scikit-learn digits (offline), CIFAR-100, and image folders."""

from __future__ import annotations

import copy
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch.utils.data import Dataset

from kdengine import DataError, DataInfo, DatasetProvider, Params, fraction_count, holdout
from kdengine import describe_params, fingerprint_files

from kdengine_classification.augment import AugmentParams, BatchAugment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class InMemoryImages(Dataset):
    """uint8 images held as one tensor, normalised on access. ``indices`` are their positions
    in the dataset they were drawn from (what tells splits apart)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, indices: torch.Tensor | None = None):
        self.images = images
        self.labels = labels
        self.indices = torch.arange(len(labels)) if indices is None else indices
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = (self.images[index].float() / 255 - self.mean) / self.std
        return image, self.labels[index]

    def subset(self, indices) -> "InMemoryImages":
        """The images at ``indices``, copied out (so the full set can be freed)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        out = copy.copy(self)
        out.images, out.labels, out.indices = self.images[index], self.labels[index], self.indices[index]
        return out


class _Classification(DatasetProvider):
    """Shared parts: normalisation, batched augmentation, the sample figure."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def batch_augment(self, inputs, targets):
        return self._augment(inputs, targets)

    def transfer_augment(self, inputs):
        """The transfer rows get the labelled rows' augmentation (crop, flip, jitter, CutMix or
        Mixup among themselves): the images of a classification transfer set arrive un-augmented,
        as its labelled ones do. The mixed labels are placeholders, dropped: the teacher labels
        the mixed view."""
        placeholder = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
        return self._augment(inputs, placeholder)[0]

    def teacher_labels(self, teacher_output, targets):
        """The teacher's top class; one-hot where the labelled rows carry soft targets (Mixup, CutMix)."""
        classes = teacher_output.argmax(dim=1)
        if targets.is_floating_point() and targets.dim() == 2:
            return torch.nn.functional.one_hot(classes, targets.shape[1]).to(targets.dtype)
        return classes.to(targets.dtype)

    @cached_property
    def _augment(self) -> BatchAugment:
        return BatchAugment(self.params.augment, self.info().num_classes, torch.tensor(self.mean), torch.tensor(self.std))

    def sample_figure(self, models, path):
        from kdengine_classification.figure import top3_grid

        return top3_grid(self.test_set(), models, path, self.mean, self.std, self.info().class_names)


DIGITS_IMAGES = 1797


class Digits(_Classification):
    """scikit-learn's handwritten digits (1,797 8x8 images, 10 classes): ships with the package,
    so it runs offline. Upsampled to ``image_size``; the images are shuffled under ``split_seed``,
    the first ``train_size`` are train, the last ``val_size`` val, and test comes from between."""

    class Params(Params):
        image_size: int = Field(16, ge=8, le=64)
        #: Training images.
        train_size: int = Field(1000, ge=10, le=1700)
        #: Validation images, disjoint from train and test.
        val_size: int = Field(200, ge=1)
        #: Test images (default: every image in neither train nor val).
        test_size: int | None = Field(None, ge=1)
        split_seed: int = 0
        augment: AugmentParams = AugmentParams()

        @model_validator(mode="after")
        def _fits(self):
            needed = self.train_size + self.val_size + (self.test_size or 1)
            if needed > DIGITS_IMAGES:
                raise ValueError(f"train_size + val_size + test_size = {needed}, but digits has "
                                 f"{DIGITS_IMAGES} images")
            return self

    mean = (0.5,)
    std = (0.5,)

    def info(self) -> DataInfo:
        return DataInfo(task="classification", in_channels=1, num_classes=10,
                        class_names=tuple(str(i) for i in range(10)))

    @cached_property
    def _splits(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images).float()[:, None] / 16.0
        size = self.params.image_size
        if size != 8:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        labels = torch.from_numpy(digits.target).long()
        p = self.params
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(p.split_seed))
        # val comes from the far end of the shuffled order, so the test images of a given
        # test_size do not depend on val_size
        train, val = order[: p.train_size], order[len(order) - p.val_size:]
        test = order[p.train_size: len(order) - p.val_size][: p.test_size]
        return tuple(InMemoryImages(images[i], labels[i], self.mean, self.std, i) for i in (train, val, test))

    def train_set(self):
        return self._splits[0]

    def val_set(self):
        return self._splits[1]

    def test_set(self):
        return self._splits[2]

    def fingerprint(self) -> str:
        from importlib.metadata import version

        return describe_params(f"digits (scikit-learn {version('scikit-learn')})", self.params,
                               ["image_size", "train_size", "val_size", "test_size", "split_seed"])


CIFAR100_TRAIN_IMAGES = 50_000


class Cifar100(_Classification):
    """CIFAR-100 through torchvision (50,000 train / 10,000 test images, 32x32, 100 classes),
    decoded once into memory. ``val_size`` images of the official train set, drawn under
    ``split_seed``, are the val split and the others train; test is the official test set.
    ``download = true`` fetches the official archive."""

    class Params(Params):
        root: Path = Path("data/cifar100")
        download: bool = False
        #: Images of the official train set held out as the val split (the rest train).
        val_size: int = Field(5000, ge=1, le=CIFAR100_TRAIN_IMAGES // 2)
        split_seed: int = 0
        augment: AugmentParams = AugmentParams(crop_padding=4, flip=True)

    mean = CIFAR100_MEAN
    std = CIFAR100_STD

    def info(self) -> DataInfo:
        return DataInfo(task="classification", in_channels=3, num_classes=100)

    def check(self) -> None:
        folder = self.params.root / "cifar-100-python"
        if not self.params.download and not folder.is_dir():
            raise DataError(
                f"data.params.root: CIFAR-100 not found: '{folder}' does not exist. Set "
                "data.params.download = true (needs the internet) or extract cifar-100-python.tar.gz there."
            )

    def _load(self, train: bool) -> InMemoryImages:
        import torchvision

        self.check()
        try:
            ds = torchvision.datasets.CIFAR100(str(self.params.root), train=train, download=self.params.download)
        except (OSError, RuntimeError) as exc:
            raise DataError(f"data.params.root: could not read or download CIFAR-100 into '{self.params.root}': {exc}") from None
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return InMemoryImages(images, torch.tensor(ds.targets, dtype=torch.long), self.mean, self.std)

    @cached_property
    def _train_val(self) -> tuple[InMemoryImages, InMemoryImages]:
        official = self._load(True)
        train, val = holdout(range(len(official)), self.params.val_size, self.params.split_seed)
        return official.subset(train), official.subset(val)

    @cached_property
    def _test(self):
        return self._load(False)

    def train_set(self):
        return self._train_val[0]

    def val_set(self):
        return self._train_val[1]

    def test_set(self):
        return self._test

    def fingerprint(self) -> dict:
        """The files of the extracted archive (``root/cifar-100-python``)."""
        folder = self.params.root / "cifar-100-python"
        return fingerprint_files(sorted(p for p in folder.rglob("*") if p.is_file()), folder)


def read_image(path: Path) -> np.ndarray:
    """An HxWx3 uint8 array; an unreadable or truncated file is a DataError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as handle:
            return np.asarray(handle.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


class FolderImages(Dataset):
    """Images read and resized on access; an unreadable file is named in the error."""

    def __init__(self, samples: list[tuple[Path, int]], size: int, mean, std):
        self.samples = samples
        self.size = size
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            array = read_image(path)
        except DataError as exc:
            raise DataError(f"{exc}; set data.on_bad_sample = \"skip\" to leave such files out") from None
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        image = F.interpolate(image[None].float() / 255, size=(self.size, self.size), mode="bilinear",
                              antialias=True, align_corners=False)[0]
        return (image.clamp(0, 1) - self.mean) / self.std, label


class ImageFolder(_Classification):
    """Your own images: ``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg`` (optional) and
    ``root/test/<class>/*.jpg``. Without a val folder, ``val_fraction`` of the train images,
    drawn under ``split_seed``, are the val split."""

    class Params(Params):
        root: Path
        image_size: int = Field(224, ge=8)
        train_dir: str = "train"
        #: The val folder, used when it exists; "" always holds val out of the train images.
        val_dir: str = "val"
        #: Share of the train images held out as val when there is no val folder.
        val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
        split_seed: int = 0
        test_dir: str = "test"
        augment: AugmentParams = AugmentParams(flip=True)

        @model_validator(mode="after")
        def _distinct_folders(self):
            folders = [d for d in (self.train_dir, self.val_dir, self.test_dir) if d]
            if len(set(folders)) != len(folders):
                raise ValueError(f"train_dir, val_dir and test_dir must name different folders, got "
                                 f"{self.train_dir!r}, {self.val_dir!r}, {self.test_dir!r}")
            return self

    EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

    def check(self) -> None:
        for sub in (self.params.train_dir, self.params.test_dir):
            folder = self.params.root / sub
            if not folder.is_dir():
                raise DataError(f"data.params.root: folder not found: '{folder}'")

    @cached_property
    def classes(self) -> list[str]:
        self.check()
        classes = sorted(p.name for p in (self.params.root / self.params.train_dir).iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{self.params.root / self.params.train_dir}: no class folders")
        return classes

    def info(self) -> DataInfo:
        return DataInfo(task="classification", in_channels=3, num_classes=len(self.classes),
                        class_names=tuple(self.classes))

    def has_val_folder(self) -> bool:
        return bool(self.params.val_dir) and (self.params.root / self.params.val_dir).is_dir()

    def _samples(self, sub: str) -> list[tuple[Path, int]]:
        samples = []
        for label, name in enumerate(self.classes):
            folder = self.params.root / sub / name
            if folder.is_dir():
                samples += [(f, label) for f in sorted(folder.iterdir()) if f.suffix.lower() in self.EXTENSIONS]
        return samples

    def _readable(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        """Under ``on_bad_sample = "skip"``, ``samples`` without the unreadable files (every image
        is decoded once, up front); otherwise ``samples`` as they are."""
        if self.on_bad_sample != "skip":
            return samples
        kept = []
        for path, label in samples:
            try:
                read_image(path)
            except DataError as exc:
                self.bad_sample(exc)
                continue
            kept.append((path, label))
        return kept

    @cached_property
    def _splits(self) -> dict[str, list[tuple[Path, int]]]:
        p = self.params
        train = self._readable(self._samples(p.train_dir))
        if self.has_val_folder():
            val = self._readable(self._samples(p.val_dir))
        else:
            count = fraction_count(len(train), p.val_fraction)
            if count >= len(train):
                raise DataError(f"{p.root / p.train_dir}: {len(train)} images are too few to hold out "
                                f"a val split; add a '{p.val_dir or 'val'}' folder")
            train, val = holdout(train, count, p.split_seed)
        return {"train": train, "val": val, "test": self._readable(self._samples(p.test_dir))}

    def _dataset(self, split: str) -> FolderImages:
        return FolderImages(self._splits[split], self.params.image_size, self.mean, self.std)

    def fingerprint(self) -> dict:
        """Every image file of the train, val (when a folder) and test folders."""
        p = self.params
        subs = [p.train_dir, *([p.val_dir] if self.has_val_folder() else []), p.test_dir]
        files = [path for sub in subs for path, _ in self._samples(sub)]
        return fingerprint_files(files, p.root)

    def train_set(self):
        return self._dataset("train")

    def val_set(self):
        return self._dataset("val")

    def test_set(self):
        return self._dataset("test")
