"""The plugin author's reference: every hook kdengine calls.

A plugin is a module (or object) with functions decorated by ``kdengine.hookimpl`` whose names
match the specs below. Each registration hook receives a ``register`` callback; call it once per
component::

    from kdengine import hookimpl, LossTerm

    class MyLoss(LossTerm):
        ...

    @hookimpl
    def register_loss_terms(register):
        register("my_loss", MyLoss)

Third-party plugins are found through the ``kdengine`` entry-point group; their components are
namespaced ``<plugin>.<name>`` in recipes.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("kdengine")
hookimpl = pluggy.HookimplMarker("kdengine")

#: ``register(name, component_class)``: ``name`` is a short identifier (``[a-z0-9_]+``),
#: ``component_class`` a subclass of the matching base in :mod:`kdengine.plugins.components`.
Register = Callable[[str, type], None]


@hookspec
def register_teachers(register: Register) -> None:
    """Register teacher model factories.

    Args:
        register: call ``register(name, cls)`` with ``cls`` a subclass of
            :class:`kdengine.plugins.components.ModelFactory`. An architecture that can play both roles is
            registered by both ``register_teachers`` and ``register_students``.
    """


@hookspec
def register_students(register: Register) -> None:
    """Register student model factories.

    Args:
        register: call ``register(name, cls)`` with ``cls`` a subclass of
            :class:`kdengine.plugins.components.ModelFactory`.
    """


@hookspec
def register_loss_terms(register: Register) -> None:
    """Register loss terms.

    Args:
        register: call ``register(name, cls)`` with ``cls`` a subclass of
            :class:`kdengine.plugins.components.LossTerm`. A loss term computes one scalar from a
            :class:`kdengine.plugins.components.LossContext`; the recipe gives it a weight.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset providers.

    Args:
        register: call ``register(name, cls)`` with ``cls`` a subclass of
            :class:`kdengine.plugins.components.DatasetProvider`, which builds the train, val and test
            splits and describes them with :class:`kdengine.plugins.components.DataInfo`.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register evaluation metrics.

    Args:
        register: call ``register(name, cls)`` with ``cls`` a subclass of
            :class:`kdengine.plugins.components.Metric`, which builds a ``torchmetrics.Metric``.
    """


KINDS: dict[str, str] = {
    "teacher": "register_teachers",
    "student": "register_students",
    "loss": "register_loss_terms",
    "dataset": "register_datasets",
    "metric": "register_metrics",
}
