"""Pydantic validation errors as one line per problem: ``loss[0].params.temprature: ...``."""

from __future__ import annotations

import re
from typing import Any, Iterable

from pydantic import ValidationError


def _format_loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(recipe)"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


#: Tables chosen by their ``name`` (tagged unions): pydantic puts the tag in the error's location.
TAGGED = ("optimizer", "scheduler")


def _location(loc: tuple) -> tuple:
    """The recipe path of an error: pydantic's internal steps and union tags left out."""
    out: list = []
    for i, part in enumerate(loc):
        if part == "function-after" or (i and loc[i - 1] in TAGGED and isinstance(part, str)):
            continue
        out.append(part)
    return tuple(out)


def format_validation_error(exc: ValidationError, prefix: tuple = ()) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = prefix + _location(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "missing required value"
        if re.match(r"^[a-z_\[\]0-9.]+: ", msg):
            # A cross-field check that names its own path, below the table it checks.
            problems.append(f"{_format_loc(loc)}.{msg}" if loc else msg)
        else:
            problems.append(f"{_format_loc(loc)}: {_lower_first(msg)}")
    return problems
