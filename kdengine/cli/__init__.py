"""The ``kdengine`` command: parse, call the API, print one clear message on a KDEngineError.

Each command is one module here with ``add_parser(subparsers)`` and ``main(args)``; the modules
import the engine only inside ``main``, so ``kdengine --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from kdengine.cli import cache_teacher, evaluate, export, layers, plugins, report, run, schema, sweep, validate
from kdengine.errors import KDEngineError

COMMANDS = {"run": run, "evaluate": evaluate, "cache-teacher": cache_teacher, "validate": validate,
            "plugins": plugins, "report": report, "export": export, "schema": schema, "layers": layers,
            "sweep": sweep}


def build_parser() -> argparse.ArgumentParser:
    from kdengine import __version__

    parser = argparse.ArgumentParser(prog="kdengine", description="Knowledge distillation from recipes.")
    parser.add_argument("--version", action="version", version=f"kdengine {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command].main(args)
    except KDEngineError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_processes()


def _leave_processes() -> None:
    """Close a multi-process run's process group, if the command opened one (imported here only
    when torch is already loaded, so ``kdengine --help`` stays fast)."""
    if "torch.distributed" in sys.modules:
        from kdengine.train.accelerator import close_process_group

        close_process_group()


if __name__ == "__main__":
    sys.exit(main())
