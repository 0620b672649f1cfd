"""Classification datasets: scikit-learn digits (offline), CIFAR-100, and image folders."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset

from kdengine import DataError, DataInfo, DatasetProvider, Params
from kdengine import describe_params, fingerprint_files

from kdengine_classification.augment import AugmentParams, BatchAugment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class InMemoryImages(Dataset):
    """uint8 images held as one tensor, normalised on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std):
        self.images = images
        self.labels = labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = (self.images[index].float() / 255 - self.mean) / self.std
        return image, self.labels[index]


class _Classification(DatasetProvider):
    """Shared parts: normalisation, batched augmentation, the sample figure."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def batch_augment(self, inputs, targets):
        return self._augment(inputs, targets)

    @cached_property
    def _augment(self) -> BatchAugment:
        return BatchAugment(self.params.augment, self.info().num_classes, torch.tensor(self.mean), torch.tensor(self.std))

    def sample_figure(self, models, path):
        from kdengine_classification.figure import top3_grid

        return top3_grid(self.eval_set(), models, path, self.mean, self.std, self.info().class_names)


class Digits(_Classification):
    """scikit-learn's handwritten digits (1,797 8x8 images, 10 classes): ships with the package,
    so it runs offline. Upsampled to ``image_size`` and split with a fixed seed."""

    class Params(Params):
        image_size: int = Field(16, ge=8, le=64)
        #: Training images; the rest of the 1,797 are the evaluation split.
        train_size: int = Field(1000, ge=10, le=1700)
        #: Evaluation images (default: all the images not used for training).
        eval_size: int | None = Field(None, ge=1)
        split_seed: int = 0
        augment: AugmentParams = AugmentParams()

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
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.params.split_seed))
        train, test = order[: self.params.train_size], order[self.params.train_size:]
        if self.params.eval_size is not None:
            test = test[: self.params.eval_size]
        return (InMemoryImages(images[train], labels[train], self.mean, self.std),
                InMemoryImages(images[test], labels[test], self.mean, self.std))

    def train_set(self):
        return self._splits[0]

    def eval_set(self):
        return self._splits[1]

    def fingerprint(self) -> str:
        from importlib.metadata import version

        return describe_params(f"digits (scikit-learn {version('scikit-learn')})", self.params,
                               ["image_size", "train_size", "eval_size", "split_seed"])


class Cifar100(_Classification):
    """CIFAR-100 through torchvision (50,000 train / 10,000 test images, 32x32, 100 classes),
    decoded once into memory. ``download = true`` fetches the official archive."""

    class Params(Params):
        root: Path = Path("data/cifar100")
        download: bool = False
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
    def _train(self):
        return self._load(True)

    @cached_property
    def _eval(self):
        return self._load(False)

    def train_set(self):
        return self._train

    def eval_set(self):
        return self._eval

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
    """Your own images: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``."""

    class Params(Params):
        root: Path
        image_size: int = Field(224, ge=8)
        train_dir: str = "train"
        eval_dir: str = "val"
        augment: AugmentParams = AugmentParams(flip=True)

    EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

    def check(self) -> None:
        for sub in (self.params.train_dir, self.params.eval_dir):
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

    def _samples(self, sub: str) -> list[tuple[Path, int]]:
        samples = []
        for label, name in enumerate(self.classes):
            folder = self.params.root / sub / name
            if folder.is_dir():
                samples += [(f, label) for f in sorted(folder.iterdir()) if f.suffix.lower() in self.EXTENSIONS]
        return samples

    @cached_property
    def _checked(self) -> dict[str, list[tuple[Path, int]]]:
        """Under ``on_bad_sample = "skip"``, each split's samples with the unreadable files left
        out (every image is decoded once, up front); memoised per split."""
        return {}

    def _split(self, sub: str) -> FolderImages:
        samples = self._samples(sub)
        if self.on_bad_sample == "skip":
            if sub not in self._checked:
                kept = []
                for path, label in samples:
                    try:
                        read_image(path)
                    except DataError as exc:
                        self.bad_sample(exc)
                        continue
                    kept.append((path, label))
                self._checked[sub] = kept
            samples = self._checked[sub]
        return FolderImages(samples, self.params.image_size, self.mean, self.std)

    def fingerprint(self) -> dict:
        """Every image file of the train and eval folders."""
        p = self.params
        files = [path for sub in dict.fromkeys((p.train_dir, p.eval_dir)) for path, _ in self._samples(sub)]
        return fingerprint_files(files, p.root)

    def train_set(self):
        return self._split(self.params.train_dir)

    def eval_set(self):
        return self._split(self.params.eval_dir)
