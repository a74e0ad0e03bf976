"""Which node replicas Ray replaced, and why: what /health's `replaced` shows,
for an hour after, per ingress replica. docs/reliability.md ("/health").
"""

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

log = logging.getLogger("ray.serve")

REPLACED_KEPT = 16
"""How many nodes /health's `replaced` names at most (the latest replacement of each)."""
REPLACED_FOR_S = 3600.0
"""How long /health's `replaced` names a replacement: long enough for an operator to see
why health dipped after it is back to 200."""


class RayStatus(NamedTuple):
    """What Ray says of one deployment."""

    status: str
    running: int
    """How many of its replicas are running."""
    message: str
    starting: int = 0
    """How many of its replicas are starting (Ray is replacing or adding them)."""


@dataclass
class Incident:
    """A unit's replica that said it is hung or broken, or that failed Ray's health check:
    what /health's `replaced` says about its nodes until `REPLACED_FOR_S` has passed."""

    unit: str
    nodes: tuple[str, ...]
    """The node that hung, or every node of the unit where the cause is not one node."""
    why: str
    pid: int | None
    """The replica's process (None: the ingress never heard from it)."""
    others: tuple[str, ...] = ()
    """The unit's other nodes, replaced with it (a fused unit)."""
    replaced_at: str | None = None
    """UTC time the ingress saw Ray replace the replica; None while Ray has yet to."""
    seen: float = field(default_factory=time.monotonic)

    def describe(self) -> str:
        replica = "its replica" + (f" (unit '{self.unit}', with {', '.join(self.others)})" if self.others else "")
        if self.replaced_at is None:
            return f"{self.why}; Ray is replacing {replica}"
        return f"{self.why}; Ray replaced {replica} at {self.replaced_at}"


def unusable(report: Mapping[str, Any] | None) -> str | None:
    """Why a replica says it must be replaced (a device error, a hung batch), or None."""
    if not report:
        return None
    if report.get("fatal"):
        first = (str(report["fatal"]).strip().splitlines() or [""])[0][:200]
        return f"hit an unrecoverable device error ({first})"
    stuck = report.get("stuck")
    if stuck:
        return f"hung {stuck['running_s']:.1f} s in one batch, past the {stuck['limit_s']:g} s limit"
    return None


class Replacements:
    """One ingress replica's record of incidents, fed every unit's report and Ray's status
    on each health refresh."""

    def __init__(self) -> None:
        self.incidents: dict[str, Incident] = {}
        """Each unit's latest incident, open (Ray has yet to replace the replica) or not."""
        self.replaced: OrderedDict[str, Incident] = OrderedDict()
        """node id -> its latest incident, oldest first: /health's `replaced`."""
        self._failing: set[str] = set()
        """Units Ray last reported UNHEALTHY after a failed health check."""

    def note(self, unit: str, nodes: tuple[str, ...], report: Mapping[str, Any] | None, ray: RayStatus | None) -> None:
        """Keep `replaced` up to date from one unit's replica report and Ray's status.
        Feed it refreshes in order: a failed health check counts once, when it first shows.

        A replica that reports itself hung or broken opens an incident (Ray is replacing
        it); Ray's UNHEALTHY after a failed health check closes it (replaced), or opens and
        closes one the ingress did not see coming (a crash). So does a report from another
        process while only one replica runs: the hung one is gone. A report from the same
        process, no longer hung, means its batch ended before Ray acted: nothing replaced."""
        incident = self.incidents.get(unit)
        why = unusable(report)
        if why and report is not None and (incident is None or incident.pid != report.get("pid")):
            culprits = (report["stuck"]["node"],) if report.get("stuck") else nodes
            incident = self._open(unit, culprits, nodes, why, report.get("pid"))
        elif why and incident is not None and incident.replaced_at is None:
            incident.why = why  # a hang grows until Ray acts
        failed_check = ray is not None and ray.status == "UNHEALTHY" and "health check" in ray.message.lower()
        if failed_check and unit not in self._failing:
            if incident is None or incident.replaced_at is not None:  # Ray saw what the ingress did not
                incident = self._open(
                    unit,
                    nodes,
                    nodes,
                    "its replica failed Ray's health check (it crashed or stopped answering)",
                    None,
                    quiet=True,
                )
            self._close(incident)
        (self._failing.add if failed_check else self._failing.discard)(unit)
        if incident is None or incident.replaced_at is not None or report is None or why:
            return
        if report.get("pid") == incident.pid:  # the batch ended before Ray acted: the replica stays
            del self.incidents[unit]
            for node_id in incident.nodes:
                if self.replaced.get(node_id) is incident:
                    del self.replaced[node_id]
            log.warning("capgraph: unit '%s' recovered by itself (%s); its replica was kept", unit, incident.why)
        elif ray is not None and ray.running == 1:  # the one running replica is another process
            self._close(incident)

    def recent(self) -> dict[str, str]:
        """/health's `replaced`: node id -> why and when Ray replaced its replica (or is
        replacing it), for the last `REPLACED_FOR_S`."""
        now = time.monotonic()
        for node_id in [n for n, incident in self.replaced.items() if now - incident.seen > REPLACED_FOR_S]:
            del self.replaced[node_id]
        return {node_id: incident.describe() for node_id, incident in self.replaced.items()}

    def _open(
        self,
        unit: str,
        culprits: tuple[str, ...],
        nodes: tuple[str, ...],
        why: str,
        pid: int | None,
        quiet: bool = False,
    ) -> Incident:
        incident = Incident(unit, culprits, why, pid, others=tuple(n for n in nodes if n not in culprits))
        self.incidents[unit] = incident
        for node_id in culprits:
            self.replaced.pop(node_id, None)
            self.replaced[node_id] = incident  # newest last
        while len(self.replaced) > REPLACED_KEPT:
            self.replaced.popitem(last=False)
        if not quiet:  # `_close` follows at once: one line is enough
            log.warning("capgraph: node %s: %s", ", ".join(f"'{n}'" for n in culprits), incident.describe())
        return incident

    def _close(self, incident: Incident) -> None:
        incident.replaced_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        incident.seen = time.monotonic()
        log.warning("capgraph: node %s: %s", ", ".join(f"'{n}'" for n in incident.nodes), incident.describe())
