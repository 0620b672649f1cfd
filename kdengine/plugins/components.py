"""Base classes for everything a recipe can name.

Each component class has a nested pydantic ``Params`` model (``extra="forbid"``) that validates
the recipe's ``params`` table before any weights load, and receives the validated instance as
``self.params``. Subclass these in a plugin and register the class through a hook
(see :mod:`kdengine.plugins.hookspecs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Mapping

import torch
from accelerate.utils import slice_tensors
from pydantic import BaseModel, ConfigDict
from torch import nn

from kdengine.errors import KDEngineError, MissingSplitError


class Params(BaseModel):
    """Base of every component's parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def _validated(cls: type, params: Params | Mapping[str, Any] | None) -> Params:
    model: type[Params] = cls.Params
    if isinstance(params, model):
        return params
    return model.model_validate(dict(params or {}))


class Component:
    """Shared constructor: ``Component(params)`` validates ``params`` against ``cls.Params``."""

    Params: ClassVar[type[Params]] = Params
    #: One line shown by ``kdengine plugins``; defaults to the first line of the docstring.
    summary: ClassVar[str] = ""

    def __init__(self, params: Params | Mapping[str, Any] | None = None):
        self.params = _validated(type(self), params)


@dataclass(frozen=True)
class DataInfo:
    """What models and metrics need to know about a dataset."""

    task: str
    in_channels: int = 3
    num_classes: int | None = None
    #: Super-resolution factor, for tasks that have one.
    scale: int | None = None
    #: Names of the classes, when known (used in reports).
    class_names: tuple[str, ...] | None = None


#: Params by which the built-in model factories start from pretrained weights.
PRETRAINED_PARAMS = ("pretrained", "pretrained_file", "weights", "encoder_weights")


class ModelFactory(Component):
    """Builds a teacher or student ``nn.Module`` for a dataset."""

    def build(self, info: DataInfo) -> nn.Module:
        raise NotImplementedError

    def starts_pretrained(self) -> bool:
        """Whether ``build`` delivers pretrained weights (downloaded, read from a file, or bundled
        with the plugin) rather than a fresh initialisation: a teacher that trains from them is
        reported as fine-tuned. The default reads the params named in ``PRETRAINED_PARAMS``;
        override it when a model loads its weights another way."""
        return any(getattr(self.params, name, None) not in (None, False) for name in PRETRAINED_PARAMS)

    def load(self, path: Path, info: DataInfo) -> nn.Module:
        """Build the model and load trained weights from ``path``.

        The default accepts kdengine's own safetensors checkpoints and plain state dicts saved with
        ``torch.save`` (read with ``weights_only=True``). Override it for formats that carry their
        own architecture (for example spandrel-detected super-resolution checkpoints).
        """
        from kdengine.io.weights import load_weights

        model = self.build(info)
        load_weights(model, path)
        return model


class DatasetProvider(Component):
    """Builds the three splits of one dataset: train, val and test.

    Each split is a ``torch.utils.data.Dataset`` whose items are ``(input, target)`` pairs, and
    the three hold disjoint samples. ``train_set()`` is what the models learn from; ``val_set()``
    is what every choice made during training is made on (best epoch, plateau schedule, a chain's
    best teacher); ``test_set()`` is scored once at the end and reported. A dataset without an
    official validation split carves one out of its training data under a fixed seed (see
    :func:`kdengine.holdout`), so it is disjoint from train and the same on every run.

    A provider that has no validation split keeps the base ``val_set()``, which raises
    :class:`~kdengine.errors.MissingSplitError` (a ``DataError``) naming the provider class:
    there is no capability flag to query and no None to check; ask for the split and let the
    error stop the run with its message.

    Bad samples (an unreadable or truncated file, a missing annotation, image and label sizes
    that disagree) are found while the splits are built, not in ``__getitem__``, and handed to
    :meth:`bad_sample`: under the recipe's ``data.on_bad_sample = "error"`` (the default) it
    raises the :class:`~kdengine.errors.DataError`; under ``"skip"`` it records the error and the
    provider leaves the sample out. The engine reports :meth:`skipped_samples` in the results.
    """

    #: ``data.on_bad_sample`` of the recipe, set by the engine after construction.
    on_bad_sample: Literal["error", "skip"] = "error"

    def bad_sample(self, error: Exception) -> None:
        """Report one bad sample: raise ``error`` under ``"error"``; under ``"skip"`` record it
        (its message names the file) and return, so that the caller leaves the sample out.
        Recording the same message twice (splits built again) counts it once."""
        if self.on_bad_sample != "skip":
            raise error
        self.__dict__.setdefault("_skipped", {})[str(error)] = None

    def skipped_samples(self) -> list[str]:
        """The bad samples left out so far, one message each, naming the file and the problem."""
        return list(self.__dict__.get("_skipped", {}))

    def fingerprint(self) -> dict[str, Any] | str | None:
        """What identifies the data this provider reads, recorded in ``environment.json``.

        File-based datasets return :func:`fingerprint_files` over the files they read; generated
        or bundled data return a string describing what produces it (for example
        ``"synthetic_edges: seed=0, size=64"``). None (the default) records that the dataset
        gives no fingerprint. Called once per run, on the main process, after the splits are built.
        """
        return None

    def split_files(self, split: str) -> list[Path] | None:
        """The files a split's images come from (``split``: train, val or test), so that a transfer
        set that holds a val or test image is refused; None (the default): not known."""
        return None

    def info(self) -> DataInfo:
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`kdengine.errors.DataError` naming the missing file or folder, if any.

        Called during recipe validation, before any weights load. Must be cheap.
        """

    def train_set(self) -> torch.utils.data.Dataset:
        """The split the models train on."""
        raise NotImplementedError

    def val_set(self) -> torch.utils.data.Dataset:
        """The split the choices made during training are made on; disjoint from train and test.

        The default raises :class:`~kdengine.errors.MissingSplitError`: override it."""
        raise MissingSplitError(f"{type(self).__name__} has no validation split: its provider does "
                                "not implement val_set() (hold out part of the training data)")

    def test_set(self) -> torch.utils.data.Dataset:
        """The split that is scored once, at the end, and reported."""
        raise NotImplementedError

    def collate_fn(self) -> Callable | None:
        """A custom collate function for every split, or None for PyTorch's default."""
        return None

    def predict(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The model's output for a val or test batch; override for tiled inference and the like."""
        return model(inputs)

    def sample_figure(self, models: dict[str, nn.Module], path: Path) -> Path | None:
        """Draw the task's sample figure (for example input | truth | teacher | students).

        ``models`` maps a stage label (``"teacher"``, ``"scratch"``, ``"distilled"``, ...) to its
        trained model, in eval mode on the run's device. Write a PNG to ``path`` and return it, or
        return None when the task has no figure. Called once per run, on the main process.
        """
        return None

    def teacher_labels(self, teacher_output: Any, targets: Any) -> Any:
        """Hard labels for transfer rows from the teacher's output on them, in the format of
        ``targets`` (the labelled rows' targets of the same step), so that the two concatenate:
        what ``train.baseline_transfer`` trains its scratch student on. The default raises: a
        dataset says how its task turns a prediction into a label (a class, an edge map)."""
        raise KDEngineError(f"dataset {type(self).__name__} does not say how a teacher's output becomes its "
                            "labels (DatasetProvider.teacher_labels), which train.baseline_transfer needs")

    def batch_augment(self, inputs: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        """Augment a training batch on the device (for example CutMix/Mixup).

        It runs once per batch, before the batch reaches the teacher and the student, so both see
        exactly the same augmented inputs. The default returns the batch unchanged.
        """
        return inputs, targets

    def transfer_augment(self, inputs: torch.Tensor) -> torch.Tensor:
        """Augment a step's transfer rows (``[data.transfer]``: images without labels) on the
        device, as :meth:`batch_augment` does the labelled rows: the teacher and the student see
        the same augmented view, and the teacher-output cache stores its outputs for that view.
        Per-image views (crops, flips) belong to the transfer dataset's own items; this is for what
        a task does to a whole batch. The default returns the rows unchanged."""
        return inputs


@dataclass
class LossContext:
    """Everything a loss term may look at for one batch."""

    inputs: torch.Tensor
    targets: Any
    student: torch.Tensor
    #: The frozen teacher's output, or None in stages without a teacher.
    teacher: torch.Tensor | None = None
    #: Tapped intermediate features, keyed by module path (see ``LossTerm.student_taps``).
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    #: With a transfer set (``[data.transfer]``): the first ``labelled`` rows are the labelled ones,
    #: the rest transfer images the teacher alone labels; ``targets`` holds the labelled rows only.
    #: None: every row is labelled.
    labelled: int | None = None

    def labelled_rows(self) -> "LossContext":
        """The context of the labelled rows alone (itself when every row is labelled): what a term
        that compares with the labels sees."""
        if self.labelled is None:
            return self
        rows = slice(0, self.labelled)
        cut = lambda value: slice_tensors(value, rows) if value is not None else None  # noqa: E731
        return LossContext(inputs=cut(self.inputs), targets=self.targets, student=cut(self.student),
                           teacher=cut(self.teacher), student_features=cut(self.student_features),
                           teacher_features=cut(self.teacher_features))


class LossTerm(nn.Module):
    """One weighted term of the training loss.

    A loss term is an ``nn.Module`` so it can own trainable parts (for example the adapters of a
    feature-matching loss); those are trained with the student and dropped at export.
    """

    Params: ClassVar[type[Params]] = Params
    summary: ClassVar[str] = ""
    #: Terms that compare with the teacher are left out of the teacher and baseline stages.
    needs_teacher: ClassVar[bool] = False
    #: Whether the term reads the labels (``ctx.targets``): such a term sees the labelled rows only
    #: of a batch that carries transfer images. None: it does exactly when it needs no teacher; a
    #: distillation term that also reads the labels (DKD's target class) says True.
    needs_labels: ClassVar[bool | None] = None

    @classmethod
    def reads_labels(cls) -> bool:
        return (not cls.needs_teacher) if cls.needs_labels is None else cls.needs_labels
    #: Whether the term is a mean of per-sample values, so that micro-batches under
    #: ``train.max_memory`` accumulate to the whole batch's gradient. False for a term that
    #: compares the samples of a batch with each other (in-batch negatives, batch correlations).
    per_sample: ClassVar[bool] = True

    def __init__(self, params: Params | Mapping[str, Any] | None = None):
        super().__init__()
        self.params = _validated(type(self), params)

    def student_taps(self) -> list[str]:
        """Module paths in the student whose outputs this term needs (``named_modules`` names)."""
        return []

    def teacher_taps(self) -> list[str]:
        """Module paths in the teacher whose outputs this term needs."""
        return []

    def setup(self, ctx: LossContext) -> None:
        """Called once with a real batch before the optimizer is built: create adapters here."""

    def forward(self, ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError


class Metric(Component):
    """Builds a ``torchmetrics.Metric`` fed with ``update(student_output, target)`` each batch.

    ``compute()`` returns a scalar tensor, or a dict of named scalars (each becomes a column).
    """

    higher_is_better: ClassVar[bool] = True
    #: The names of the values ``compute()`` returns when it returns a dict (e.g. ``("ods", "ois")``);
    #: empty when it returns one scalar, which is reported under the recipe's metric name.
    keys: ClassVar[tuple[str, ...]] = ()

    def build(self, info: DataInfo):
        raise NotImplementedError
