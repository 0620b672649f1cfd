"""The plugin manager: built-ins always, third-party entry points one at a time.

Rules:
- the built-in plugins (``kdengine_classification``, ``kdengine_edges``, ``kdengine_superres``) are
  always loaded;
- third-party plugins come from entry points of group ``kdengine``; each is imported and checked on
  its own, and one that fails to import or declares an unknown hook is skipped with a warning naming
  it (``KDENGINE_STRICT_PLUGINS=1`` turns that into an error);
- ``KDENGINE_DISABLE_PLUGINS=a,b`` blocks plugins by name.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points, version

import pluggy

from kdengine.plugins import hookspecs
from kdengine.errors import PluginError

ENTRY_POINT_GROUP = "kdengine"

#: plugin name -> import name of the built-in plugin packages.
BUILTIN_PLUGINS: dict[str, str] = {
    "classification": "kdengine_classification",
    "edges": "kdengine_edges",
    "superres": "kdengine_superres",
}


@dataclass(frozen=True)
class PluginSource:
    """Where a loaded plugin came from, for ``kdengine plugins``."""

    name: str
    distribution: str
    version: str
    builtin: bool


class PluginWarning(UserWarning):
    """A third-party plugin was skipped."""


def _strict() -> bool:
    return os.environ.get("KDENGINE_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


def _disabled() -> set[str]:
    raw = os.environ.get("KDENGINE_DISABLE_PLUGINS", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def skip_or_raise(plugin: str, reason: str) -> None:
    """Skip a broken third-party plugin with a warning, or raise under strict mode."""
    message = f"plugin '{plugin}' skipped: {reason}"
    if _strict():
        raise PluginError(message + " (KDENGINE_STRICT_PLUGINS is set)")
    warnings.warn(message, PluginWarning, stacklevel=3)


def kdengine_version() -> str:
    try:
        return version("kdengine")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


def _register_checked(pm: pluggy.PluginManager, module: object, name: str) -> None:
    """Register one plugin and reject it alone if it implements a hook kdengine does not have."""
    pm.register(module, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(name=name)
        raise PluginError(f"declares an unknown hook: {exc}") from exc


def create_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginSource]]:
    """Build a fresh plugin manager with every enabled plugin registered."""
    pm = pluggy.PluginManager("kdengine")
    pm.add_hookspecs(hookspecs)
    sources: dict[str, PluginSource] = {}
    disabled = _disabled()
    kd_version = kdengine_version()

    for name, module_name in BUILTIN_PLUGINS.items():
        if name in disabled:
            continue
        _register_checked(pm, importlib.import_module(module_name), name)
        sources[name] = PluginSource(name, "kdengine", kd_version, builtin=True)

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in disabled:
            continue
        if ep.name in sources:
            raise PluginError(
                f"plugin name clash: entry point '{ep.name}' of "
                f"{_dist_name(ep)} has the same name as the plugin from {sources[ep.name].distribution}"
            )
        try:
            module = ep.load()
            _register_checked(pm, module, ep.name)
        except Exception as exc:  # any import-time failure of foreign code is isolated
            skip_or_raise(ep.name, f"{type(exc).__name__}: {exc}")
            continue
        dist = ep.dist
        sources[ep.name] = PluginSource(
            ep.name,
            dist.name if dist else "unknown",
            dist.version if dist else "unknown",
            builtin=False,
        )
    return pm, sources


def _dist_name(ep) -> str:
    return f"distribution '{ep.dist.name}'" if ep.dist else "an unknown distribution"
