"""``kdengine schema``: the JSON Schema of recipes, with every installed component's params."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    schema = sub.add_parser("schema", help="write the JSON Schema of recipes, with every installed component's params")
    schema.add_argument("--output", "-o", help="write to this file instead of standard output")


def main(args) -> int:
    from kdengine.io.atomic import atomic_write_text
    from kdengine.recipe.schema import recipe_schema

    text = json.dumps(recipe_schema(), indent=2)
    if args.output:
        atomic_write_text(Path(args.output), text + "\n")
        print(f"Wrote {args.output}")
    else:
        print(text)
    return 0
