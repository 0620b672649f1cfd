"""``kdengine schema``: the JSON Schema of recipes, with every installed component's ``Params``.

Each component table (``data``, ``teacher``, ``student``, ``loss[]``, ``metric[]``) becomes a
``oneOf`` over the registered names, discriminated by ``name``: an editor that knows JSON Schema
(for TOML through taplo / Even Better TOML, or for JSON) then completes names and checks each
component's params against its own model. Built from the live catalog, so third-party plugins
that are installed appear too.
"""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, create_model
from pydantic.json_schema import PydanticJsonSchemaWarning

from kdengine.plugins.catalog import get_catalog
from kdengine.recipe import ComponentSpec, DataSpec, LossSpec, Recipe, TeacherSpec

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _model_name(kind: str, name: str) -> str:
    return f"{kind}_" + re.sub(r"[^A-Za-z0-9]", "_", name)


def _params_field(cls: type) -> tuple[Any, Any]:
    params = cls.Params
    required = any(f.is_required() for f in params.model_fields.values())
    try:
        TypeAdapter(params).json_schema()
    except Exception:  # a Params type without a JSON form: accept any table rather than fail
        return dict[str, Any], Field(default_factory=dict)
    if required:
        return params, ...
    return params, Field(default_factory=params)


def _union(kind: str, base: type) -> Any:
    catalog = get_catalog()
    variants = []
    for name in catalog.names(kind):
        cls = catalog.get(kind, name)
        doc = (getattr(cls, "summary", "") or (cls.__doc__ or "").strip()).splitlines()
        variants.append(create_model(
            _model_name(kind, name), __base__=base, __doc__=doc[0] if doc else None,
            name=(Literal[name], ...), params=_params_field(cls),
        ))
    if not variants:
        return base
    if len(variants) == 1:
        return variants[0]
    return Annotated[Union[tuple(variants)], Field(discriminator="name")]


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a recipe with the installed components."""
    model = create_model(
        "Recipe", __base__=Recipe,
        __doc__="A kdengine recipe (TOML): every component table is name + params (+ weight for losses).",
        data=(_union("dataset", DataSpec), ...),
        teacher=(_union("teacher", TeacherSpec), ...),
        student=(_union("student", ComponentSpec), ...),
        loss=(list[_union("loss", LossSpec)], Field(min_length=1)),
        metric=(list[_union("metric", ComponentSpec)], Field(min_length=1)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)  # non-serialisable defaults are left out
        schema = model.model_json_schema(mode="validation")
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "kdengine recipe"
    return schema


__all__ = ["recipe_schema"]
