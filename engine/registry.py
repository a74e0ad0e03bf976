"""The catalogue of node families: the built-in ones plus the `capgraph.nodes` entry points,
built once on first use, with where each family came from, which plug-ins failed, and a
check of a graph's `requires:` list. docs/graph-format.md has how to add a family.
"""

import functools
import importlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from importlib.metadata import entry_points

from capgraph.engine.node import FAMILY_ID, Node

ENTRY_POINT_GROUP = "capgraph.nodes"
EXTRA_ENV = "CAPGRAPH_NODES"
"""Comma-separated `module:Class` families to add without packaging them (a folder on
PYTHONPATH is enough); read in every process, Ray replicas included."""
log = logging.getLogger("capgraph")
BUILTIN_PACKAGE = "capgraph"
BUILTIN_LIST = "capgraph.nodes:BUILTIN"
"""The built-in families' `module:Class` lines, read by name as plug-ins are: the engine imports no node module."""


@dataclass(frozen=True)
class Origin:
    """Where a family comes from: the distribution that provides it and how it was found."""

    package: str
    """The pip distribution ("capgraph" for built-ins); "" for CAPGRAPH_NODES and register()."""
    version: str
    via: str
    """"built-in", "entry point <name>", "CAPGRAPH_NODES" or "register()"."""

    @property
    def plugin(self) -> bool:
        """Provided by an installed package other than capgraph: every machine needs it."""
        return self.package not in ("", BUILTIN_PACKAGE)

    def __str__(self) -> str:
        return f"{self.package} {self.version}".strip() if self.package else self.via


_origins: dict[str, Origin] = {}
_broken: dict[str, str] = {}
"""Plug-ins that failed to load, by entry point name: what went wrong and whose they are."""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


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
    families: dict[str, type[Node]] = {}
    builtin = Origin(BUILTIN_PACKAGE, _version(BUILTIN_PACKAGE), "built-in")
    for target in _import(BUILTIN_LIST):
        family = _check(_import(target), target)
        families[family.type] = family
        _origins[family.type] = builtin
    plugins = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        plugins.append(
            (
                ep.name,
                ep.value,
                ep.load,
                Origin(dist.name if dist else "", dist.version if dist else "", f"entry point {ep.name}"),
            )
        )
    plugins += [
        (t.strip(), t.strip(), functools.partial(_import, t.strip()), Origin("", "", EXTRA_ENV))
        for t in os.environ.get(EXTRA_ENV, "").split(",")
        if t.strip()
    ]
    for name, target, load, origin in plugins:
        try:
            family = _check(load(), target)
        except Exception as exc:  # a broken plug-in must not take the catalogue down
            log.warning("skipping node family plug-in %s: %s", target, exc)
            _broken[name] = (
                f"the plug-in '{name}' ({target}{', from ' + str(origin) if origin.package else ''}) "
                f"failed to load: {exc}"
            )
            continue
        if family.type in families and families[family.type] is not family:
            log.warning("skipping plug-in %s: family id '%s' is already taken", target, family.type)
            continue
        families[family.type] = family
        _origins[family.type] = origin
    return dict(sorted(families.items()))


def family(name: str) -> type[Node] | None:
    return catalogue().get(name)


def origin(name: str) -> Origin | None:
    """Where the family `name` comes from (None: not in the catalogue)."""
    return _origins.get(name) if name in catalogue() else None


def broken(name: str) -> str | None:
    """Why a plug-in whose entry point is called `name` did not load (None: it did, or none is called so)."""
    catalogue()
    return _broken.get(name)


def unmet(requirements: list[str]) -> dict[str, str]:
    """Which of a graph's `requires:` entries this machine does not satisfy: requirement ->
    what is wrong (not a requirement, not installed, another version installed)."""
    from packaging.requirements import InvalidRequirement, Requirement

    problems: dict[str, str] = {}
    for text in requirements:
        try:
            wanted = Requirement(text)
        except InvalidRequirement as exc:
            problems[text] = f"is not a pip requirement ({exc})"
            continue
        installed = _version(wanted.name)
        if not installed:
            problems[text] = "is not installed on this machine"
        elif not wanted.specifier.contains(installed, prereleases=True):
            problems[text] = f"is not met: {installed} is installed"
    return problems


def register(family: type[Node]) -> type[Node]:
    """Add a family to this process's catalogue by hand (notebooks, tests, benchmarks).
    Installed plug-ins should use the entry point group instead."""
    _check(family, family.__qualname__)
    taken = catalogue().get(family.type)
    if taken is not None and taken is not family:
        raise ValueError(f"family id '{family.type}' is already taken by {taken.__module__}.{taken.__qualname__}")
    catalogue()[family.type] = family
    _origins.setdefault(family.type, Origin("", "", "register()"))
    return family
