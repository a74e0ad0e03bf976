"""The catalogue of node families: the built-in ones plus the `capgraph.nodes` entry points.

Nothing registers on import. The catalogue is built once, on first use, from the literal
list in `nodes/__init__.py` and from installed distributions that declare

    [project.entry-points."capgraph.nodes"]
    my_family = "my_package.my_module:MyFamily"

so a third party adds a node family with a pip install and no fork.
"""

import functools
import importlib
import logging
import os
from importlib.metadata import entry_points

from capgraph.engine.node import FAMILY_ID, Node

ENTRY_POINT_GROUP = "capgraph.nodes"
EXTRA_ENV = "CAPGRAPH_NODES"
"""Comma-separated `module:Class` families to add without packaging them (a folder on
PYTHONPATH is enough); read in every process, Ray replicas included."""
log = logging.getLogger("capgraph")


def _import(target: str) -> object:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _check(family: object, source: str) -> type[Node]:
    if not (isinstance(family, type) and issubclass(family, Node)):
        raise TypeError(f"{source} is not a capgraph Node subclass")
    if not FAMILY_ID.match(getattr(family, "type", "")):
        raise TypeError(f"{source}: family id {getattr(family, 'type', None)!r} must match {FAMILY_ID.pattern}")
    return family


@functools.cache
def catalogue() -> dict[str, type[Node]]:
    """Every node family by id, built-ins first; third-party ids may not shadow them."""
    from capgraph.nodes import BUILTIN

    families: dict[str, type[Node]] = {}
    for target in BUILTIN:
        family = _check(_import(target), target)
        families[family.type] = family
    plugins = [(ep.value, ep.load) for ep in entry_points(group=ENTRY_POINT_GROUP)]
    plugins += [(t.strip(), functools.partial(_import, t.strip())) for t in os.environ.get(EXTRA_ENV, "").split(",") if t.strip()]
    for target, load in plugins:
        try:
            family = _check(load(), target)
        except Exception as exc:  # a broken plug-in must not take the catalogue down
            log.warning("skipping node family plug-in %s: %s", target, exc)
            continue
        if family.type in families and families[family.type] is not family:
            log.warning("skipping plug-in %s: family id '%s' is already taken", target, family.type)
            continue
        families[family.type] = family
    return dict(sorted(families.items()))


def family(name: str) -> type[Node] | None:
    return catalogue().get(name)


def register(family: type[Node]) -> type[Node]:
    """Add a family to this process's catalogue by hand (notebooks, tests, benchmarks).
    Installed plug-ins should use the entry point group instead."""
    _check(family, family.__qualname__)
    taken = catalogue().get(family.type)
    if taken is not None and taken is not family:
        raise ValueError(f"family id '{family.type}' is already taken by {taken.__module__}.{taken.__qualname__}")
    catalogue()[family.type] = family
    return family
