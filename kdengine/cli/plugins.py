"""``kdengine plugins``: every plugin, its version and what it registers; ``--details`` adds each
registered name's one-line summary (for loss terms, the method and its paper)."""

from __future__ import annotations


def add_parser(sub) -> None:
    parser = sub.add_parser("plugins", help="list plugins and what each registers")
    parser.add_argument("--details", action="store_true",
                        help="one line per registered name with its summary (a loss term's method and paper)")


def main(args) -> int:
    from kdengine.plugins.catalog import KIND_LABELS, get_catalog

    catalog = get_catalog()
    for name, source in catalog.plugins.items():
        origin = "built-in" if source.builtin else f"{source.distribution} {source.version}"
        print(f"{name} ({origin}, version {source.version})")
        for kind, names in catalog.registered_by(name).items():
            if not names:
                continue
            if not getattr(args, "details", False):
                print(f"  {KIND_LABELS[kind]}s: {', '.join(names)}")
                continue
            print(f"  {KIND_LABELS[kind]}s:")
            width = max(len(n) for n in names)
            for entry_name in names:
                summary = catalog.entry(kind, entry_name).summary
                print(f"    {entry_name:<{width}}  {summary}".rstrip())
    return 0
