"""Mounts: packages that add routes to a served capability, each configured by a top-level
section of the graph file named after it. They are found through the `capgraph.mounts`
entry point group, so the engine and the Serve layer never name one (capgraph's own
Livepeer routes are such a mount); docs/graph-format.md shows how to write one.
"""

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from capgraph.engine.plan import Plan

GROUP = "capgraph.mounts"


class Mount(Protocol):
    """What a mount provides; `section` is also its entry point's name."""

    section: str

    def check(self, raw: Any, plan: "Plan | None") -> list[str]:
        """Problems with the section as written (None: absent), each 'dotted.path: message'
        with the path from the top of the file; `capgraph validate` shows them with lines."""

    def settings(self, plan: "Plan", raw: Mapping[str, Any] | None) -> Any:
        """The section's settings, read where they are used (a secret given as an environment
        variable stays on the cluster); raises ValueError when they are invalid."""

    def attach(self, app: Any, capability: Any, settings: Any) -> set[str]:
        """Add the routes to `app` (a FastAPI app), which serves `capability` (its `plan`,
        `run(inputs, params)`, `is_ready()` and `settings.max_pixels` / `max_body_bytes`).
        Returns the paths whose errors `error` shapes."""

    def error(self, exc: Exception, headers: Mapping[str, str] | None) -> Any:
        """The answer to a failed request on one of the mount's paths."""


@cache
def section_names() -> frozenset[str]:
    """The top-level graph-file sections that belong to installed mounts (nothing imported)."""
    return frozenset(ep.name for ep in entry_points(group=GROUP))


@cache
def mounts() -> dict[str, Mount]:
    """Every installed mount by section, loaded once."""
    return {ep.name: ep.load() for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name)}
