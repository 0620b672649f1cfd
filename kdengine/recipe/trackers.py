"""Tracker names a recipe may give in ``train.log_with``: Accelerate's own list."""

from __future__ import annotations

import difflib
from typing import Iterable


def supported_trackers() -> list[str]:
    """Every tracker name Accelerate knows (its built-in ones and any registered with
    ``accelerate.tracking.register_tracker_class``)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(str(name) for name in LOGGER_TYPE_TO_CLASS)


def check_tracker_names(names: Iterable[str]) -> list[str]:
    """The recipe's ``train.log_with``, without repeats; a ValueError names an unknown tracker."""
    names = list(dict.fromkeys(names))
    if not names:
        return names
    known = supported_trackers()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown tracker '{name}'{hint}; Accelerate supports: {', '.join(known)}")
    return names
