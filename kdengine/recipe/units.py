"""Sizes in a recipe: ``train.max_memory = "4GiB"``."""

from __future__ import annotations

import re

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes in ``"4GiB"``, ``"512 MB"``, ``"1.5gb"`` or a plain integer."""
    if isinstance(text, int):
        if text <= 0:
            raise ValueError("must be positive")
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise ValueError(f"'{text}' is not a size such as '4GiB', '512MiB' or '2GB'")
    value = float(match.group(1)) * UNITS[match.group(2).lower()]
    if value < 1:
        raise ValueError("must be positive")
    return int(value)


def format_size(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
