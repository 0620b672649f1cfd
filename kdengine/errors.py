"""The errors a user can act on.

Every error kdengine raises on purpose is a ``KDEngineError``: the CLI prints its message on one
line (or several, for a list of recipe problems), exits with code 2 and shows no traceback unless
``--debug`` is given.
"""

from __future__ import annotations


class KDEngineError(Exception):
    """Base class: a problem the user can fix (bad recipe, missing file, broken plugin)."""


class RecipeError(KDEngineError):
    """A recipe failed to parse or validate. ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


class PluginError(KDEngineError):
    """A plugin failed to load, declared an unknown hook, or clashes with another plugin."""


class DataError(KDEngineError):
    """A dataset is missing, unreadable or inconsistent; the message names the file."""


class MissingSplitError(DataError):
    """A dataset provider lacks a split the run needs (for example it has no ``val_set()``)."""


class DataWarning(UserWarning):
    """About the data of a run that goes on: bad samples were left out
    (``data.on_bad_sample = "skip"``), or a resumed run's data changed since it started."""


class CheckpointError(KDEngineError):
    """A checkpoint is missing, unsafe, or does not match the architecture."""


class WeightsUnavailableError(CheckpointError):
    """Pretrained weights were asked for but are neither cached locally nor downloadable."""


class TrainingError(KDEngineError):
    """Training cannot go on (for example a non-finite loss)."""


class located:
    """Context manager: prefix a KDEngineError raised inside with the recipe file and the recipe
    section it concerns, so every message names the file and the field.

        with located(recipe.source, "data"):
            provider.check()
    """

    def __init__(self, source: str, where: str):
        self.source = source
        self.where = where

    def __enter__(self) -> "located":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, KDEngineError) or isinstance(exc, RecipeError):
            return False
        message = str(exc)
        if message.startswith(self.source + ":"):
            return False
        section = self.where.split(".")[0].split("[")[0]
        if not message.startswith((section + ".", section + ":", section + "[", section + " '")):
            message = f"{self.where}: {message}"
        new = KDEngineError.__new__(type(exc))
        Exception.__init__(new, f"{self.source}: {message}")
        raise new from exc
