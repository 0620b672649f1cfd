"""The ``kdengine`` command: parse, call the API, print one clear message on a KDEngineError."""

from __future__ import annotations

import argparse
import sys

from kdengine.errors import KDEngineError


def _add_recipe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe file (TOML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.epochs=3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdengine", description="Knowledge distillation from recipes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train teacher, baseline and distilled student")
    _add_recipe(run)
    run.add_argument("--output-dir", help="parent folder of the run folder (default: the recipe's run.output_dir)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    validate = sub.add_parser("validate", help="dry run: build everything, push one batch, report costs")
    _add_recipe(validate)

    sub.add_parser("plugins", help="list plugins and what each registers")
    return parser


def cmd_run(args) -> int:
    import kdengine

    results = kdengine.run(args.recipe, overrides=args.overrides, progress=not args.no_progress,
                           output_dir=args.output_dir)
    print(results.table())
    print(f"\nRun folder: {results.run_dir}")
    return 0


def cmd_validate(args) -> int:
    from kdengine.dryrun import dry_run

    print("\n".join(dry_run(args.recipe, args.overrides).lines()))
    return 0


def cmd_plugins(args) -> int:
    from kdengine.catalog import KIND_LABELS, get_catalog

    catalog = get_catalog()
    for name, source in catalog.plugins.items():
        origin = "built-in" if source.builtin else f"{source.distribution} {source.version}"
        print(f"{name} ({origin}, version {source.version})")
        for kind, names in catalog.registered_by(name).items():
            if names:
                print(f"  {KIND_LABELS[kind]}s: {', '.join(names)}")
    return 0


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "plugins": cmd_plugins}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KDEngineError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
