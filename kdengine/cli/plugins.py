"""``kdengine plugins``: every plugin, its version and what it registers."""

from __future__ import annotations


def add_parser(sub) -> None:
    sub.add_parser("plugins", help="list plugins and what each registers")


def main(args) -> int:
    from kdengine.plugins.catalog import KIND_LABELS, get_catalog

    catalog = get_catalog()
    for name, source in catalog.plugins.items():
        origin = "built-in" if source.builtin else f"{source.distribution} {source.version}"
        print(f"{name} ({origin}, version {source.version})")
        for kind, names in catalog.registered_by(name).items():
            if names:
                print(f"  {KIND_LABELS[kind]}s: {', '.join(names)}")
    return 0
