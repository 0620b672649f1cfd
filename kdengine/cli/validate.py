"""``kdengine validate RECIPE``: dry run; build everything, push one batch, report costs."""

from __future__ import annotations

from kdengine.cli._args import add_recipe


def add_parser(sub) -> None:
    validate = sub.add_parser("validate", help="dry run: build everything, push one batch, report costs")
    add_recipe(validate)
    validate.add_argument("--layers", action="store_true",
                          help="also list the teacher's and student's tappable layers (module paths for "
                               "feature losses) with their output shapes on the batch")


def main(args) -> int:
    from kdengine.tools.validate import dry_run

    print("\n".join(dry_run(args.recipe, args.overrides, layers=args.layers).lines()))
    return 0
