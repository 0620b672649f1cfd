"""Argument types and options that several commands share."""

from __future__ import annotations

import argparse


def add_recipe(parser: argparse.ArgumentParser, help: str = "a recipe file (TOML)", nargs: str | None = None) -> None:
    parser.add_argument("recipe", nargs=nargs, help=help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.epochs=3 (repeatable)")


def shape(text: str) -> tuple[int, ...]:
    try:
        parsed = tuple(int(part) for part in text.split(","))
    except ValueError:
        parsed = ()
    if not parsed or any(n <= 0 for n in parsed):
        raise argparse.ArgumentTypeError(f"expected positive comma-separated integers, e.g. 3,32,32; got '{text}'")
    return parsed


def positive_int(text: str) -> int:
    """A count that must be at least 1 (a batch, a number of runs or images, of processes)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1; got '{text}'")
    return value


def seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 0,1,2; got '{text}'") from None
