"""The base of every recipe table."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Table(BaseModel):
    """A table of the recipe: a key it does not know is an error (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
