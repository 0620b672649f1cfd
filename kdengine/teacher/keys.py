"""What fixes a given teacher's outputs and scores, as one key for the teacher-output cache and
the teacher's scores file.

A stored teacher output (or score) may only be served to a run that would have computed the very
same values. Those are fixed by the teacher (its weights, and the factory and params that build the
model around them), the code that runs it (kdengine's version and the versions of the plugins that
provide the teacher, the dataset and, for scores, the metrics), and the data it sees. The cache and
the scores file each add their own parts (the batch layout, the metrics) with :meth:`CacheKey.with_parts`.
Parts that do not change a value (the student's precision, how many rows a cache build groups per
forward pass) stay out of the key, so they do not build a second copy of the same outputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdengine.plugins.catalog import get_catalog
from kdengine.plugins.manager import kdengine_version

if TYPE_CHECKING:
    from kdengine.recipe import ComponentSpec
    from kdengine.train.context import RunContext

#: Bumped when the meaning of a part changes, so that no stored value outlives it.
FORMAT = 2


@dataclass(frozen=True)
class CacheKey:
    """The parts a stored value depends on; two keys are equal exactly when every part is."""

    parts: dict[str, Any] = field(default_factory=dict)

    def with_parts(self, **parts: Any) -> "CacheKey":
        return CacheKey({**self.parts, **parts})

    def recorded(self) -> dict[str, Any]:
        """The parts as JSON reads them back (tuples as lists, paths as strings): what a stored
        value's metadata records and what :meth:`difference` compares against."""
        return json.loads(json.dumps(self.parts, sort_keys=True, default=str))

    def text(self) -> str:
        return json.dumps({"format": FORMAT, **self.parts}, sort_keys=True, default=str)

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()[:24]

    def difference(self, recorded: dict[str, Any]) -> list[str]:
        """The parts on which ``recorded`` (another key's :meth:`recorded`) differs from this key."""
        mine = self.recorded()
        return sorted(k for k in set(mine) | set(recorded) if mine.get(k) != recorded.get(k))


def component_version(kind: str, name: str) -> str:
    """``plugin==version`` of the plugin that registers component ``name`` of ``kind``: a fix
    in it may change what the component computes."""
    catalog = get_catalog()
    plugin = catalog.entry(kind, name).plugin
    source = catalog.plugins.get(plugin)
    return f"{plugin}=={source.version if source is not None else 'unknown'}"


def code_versions(components: list[tuple[str, str]]) -> dict[str, str]:
    """torch's and kdengine's versions and that of each ``(kind, name)`` component's plugin."""
    import torch

    return {"torch": torch.__version__, "kdengine": kdengine_version(), **{f"{kind}:{name}": component_version(kind, name) for kind, name in components}}


def data_parts(ctx: "RunContext") -> dict[str, Any]:
    """The data a teacher sees: the recipe's ``[data]`` and the provider's fingerprint of its files."""
    fingerprint = getattr(ctx.provider, "fingerprint", None)
    return {"data": ctx.recipe.data.model_dump(mode="json"),
            "data_fingerprint": fingerprint() if callable(fingerprint) else None}


def teacher_key(ctx: "RunContext", kind: str, spec: "ComponentSpec", weights_key: str,
                more_components: list[tuple[str, str]] = ()) -> CacheKey:
    """The key of a teacher built by component ``spec`` of ``kind`` ("teacher", or "student" for a
    generation that teaches the next) with the weights ``weights_key`` hashes, on the run's data."""
    components = [(kind, spec.name), ("dataset", ctx.recipe.data.name), *more_components]
    return CacheKey({
        "teacher_weights": weights_key,
        "teacher_model": {"kind": kind, "name": spec.name, "params": spec.model_dump(mode="json")["params"]},
        "code": code_versions(components),
        **data_parts(ctx),
    })
