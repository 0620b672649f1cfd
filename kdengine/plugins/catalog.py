"""Name -> component class, built from the registration hooks' results.

The catalog is a view of what the plugins registered, not a registry of its own: it is rebuilt
from the plugin manager on demand (``get_catalog(refresh=True)``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from kdengine.plugins import components
from kdengine.errors import KDEngineError, PluginError
from kdengine.plugins.hookspecs import KINDS
from kdengine.plugins.manager import PluginSource, create_plugin_manager, skip_or_raise

#: The base class each kind's components must derive from.
BASES: dict[str, type] = {
    "teacher": components.ModelFactory,
    "student": components.ModelFactory,
    "loss": components.LossTerm,
    "dataset": components.DatasetProvider,
    "metric": components.Metric,
}

KIND_LABELS = {
    "teacher": "teacher",
    "student": "student",
    "loss": "loss term",
    "dataset": "dataset",
    "metric": "metric",
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    cls: type
    plugin: str

    @property
    def summary(self) -> str:
        text = getattr(self.cls, "summary", "") or (self.cls.__doc__ or "").strip()
        paragraph = text.split("\n\n")[0]  # a first sentence may wrap over several lines
        return " ".join(line.strip() for line in paragraph.splitlines())


@dataclass
class Catalog:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    plugins: dict[str, PluginSource] = field(default_factory=dict)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def entry(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise KDEngineError(unknown_name_message(kind, name, self.names(kind))) from None

    def get(self, kind: str, name: str) -> type:
        return self.entry(kind, name).cls

    def registered_by(self, plugin: str) -> dict[str, list[str]]:
        return {
            kind: sorted(e.name for e in entries.values() if e.plugin == plugin)
            for kind, entries in self.entries.items()
        }


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    label = KIND_LABELS[kind]
    message = f"unknown {label} '{name}'."
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if close:
        message += f" Did you mean '{close[0]}'?"
    message += f" Known {label}s: {', '.join(known) if known else '(none)'}"
    return message


def build_catalog() -> Catalog:
    pm, sources = create_plugin_manager()
    catalog = Catalog(plugins=sources)
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name
            builtin = sources[plugin].builtin if plugin in sources else True
            found: list[Entry] = []

            def register(name: str, cls: type, _plugin=plugin, _found=found, _kind=kind) -> None:
                if not isinstance(name, str) or not _NAME.match(name):
                    raise PluginError(f"plugin '{_plugin}' registered an invalid {_kind} name {name!r}")
                if not (isinstance(cls, type) and issubclass(cls, BASES[_kind])):
                    raise PluginError(
                        f"plugin '{_plugin}' registered {_kind} '{name}' as {cls!r}, "
                        f"which is not a subclass of kdengine.{BASES[_kind].__name__}"
                    )
                _found.append(Entry(_kind, name, cls, _plugin))

            try:
                impl.function(register=register)
            except Exception as exc:
                if builtin:
                    raise
                skip_or_raise(plugin, f"{hook_name} failed: {type(exc).__name__}: {exc}")
                continue
            for entry in found:
                full = entry.name if builtin else f"{plugin}.{entry.name}"
                existing = catalog.entries[kind].get(full)
                if existing is not None:
                    raise PluginError(
                        f"{KIND_LABELS[kind]} '{full}' is registered by both plugin "
                        f"'{existing.plugin}' and plugin '{plugin}'"
                    )
                catalog.entries[kind][full] = Entry(kind, full, entry.cls, plugin)
    return catalog


_CACHE: Catalog | None = None


def get_catalog(refresh: bool = False) -> Catalog:
    """The catalog of every enabled plugin, built once per process unless ``refresh``."""
    global _CACHE
    if _CACHE is None or refresh:
        _CACHE = build_catalog()
    return _CACHE
