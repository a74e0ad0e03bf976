"""The capability's health, as one ingress replica sees it: what Ray and the node replicas
say, each node's state (ok, updating, loading, unhealthy, failed), the replicas replaced
of late (`serve.capability.incidents`), and the watcher that logs every change."""

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from capgraph.serve.capability.incidents import RayStatus, Replacements, unusable
from capgraph.serve.cluster import claimed
from capgraph.serve.compile import Compiled, Unit

log = logging.getLogger("ray.serve")

READY = {"HEALTHY", "UPSCALING", "DOWNSCALING"}
"""Ray deployment statuses in which every replica the deployment wants is running."""


class Health:
    """What Ray and the node replicas of one capability say, for /health, `is_ready` and
    the watcher. `app_name`: the Serve application whose deployments Ray reports on."""

    def __init__(
        self, compiled: Compiled, handles: Mapping[str, DeploymentHandle], app_name: str, check_period_s: float
    ):
        self.compiled, self.handles, self.app_name, self.check_period_s = compiled, handles, app_name, check_period_s
        self.started = time.monotonic()
        self.healthy_since: float | None = None
        self._cache: tuple[float, bool, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        """One refresh at a time: the incident record must see Ray's statuses in order."""
        self.reports: dict[str, dict[str, Any] | None] = {}
        """Each unit's latest replica report (`UnitReplica.state`; None: none answered): the
        console's devices, models and queues."""
        self.replacements = Replacements()
        """Node replicas hung, broken or replaced of late: /health's `replaced`."""
        own = {u.name for u in compiled.units if u.remote is None}  # a shared model runs before this graph's own units
        self.born_serving = any(ray.running for name, ray in self.ray_statuses().items() if name in own)
        """Whether node replicas were already running when this ingress started: it is a new
        version rolling out over a serving one, so a node without a warm replica is updating."""

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every unit's replicas have loaded and warmed their nodes (they report
        it) and Ray has every replica it wants running. Cached for half a second. Notes
        replicas that are hung, broken or replaced on the way (`self.replacements`)."""
        async with self._lock:  # a caller that waited finds the cache fresh
            now = time.monotonic()
            if self._cache and now - self._cache[0] < 0.5:
                return self._cache[1], self._cache[2]
            return await self._refresh(now)

    async def _refresh(self, now: float) -> tuple[bool, dict[str, Any]]:
        """Ask Ray and every unit afresh (under `_lock`)."""
        statuses = await asyncio.to_thread(self.ray_statuses)
        reports = await asyncio.gather(*(self._state(u, statuses.get(u.name)) for u in self.compiled.units))
        self.reports = {unit.name: report for unit, report in zip(self.compiled.units, reports)}
        moving = await asyncio.to_thread(self._moving, statuses)  # reads the reports' load times
        nodes: dict[str, Any] = {}
        ready = True
        for unit, report in zip(self.compiled.units, reports):
            ray = statuses.get(unit.name)
            # a replica moving on purpose failed its health check: that is no incident
            self.replacements.note(unit.name, unit.nodes, report, None if unit.name in moving else ray)
            status = "MOVING" if unit.name in moving and ray and ray.running else ray.status if ray else None
            for node_id in unit.nodes:
                serving = _serving(report, node_id)
                nodes[node_id] = _node_state(
                    report, node_id, status, serving, self.healthy_since is not None or self.born_serving
                )
                ready = ready and serving and nodes[node_id] in ("ok", "updating", "moving")
        self._cache = (now, ready, nodes)
        return ready, nodes

    async def _state(self, unit: Unit, ray_status: RayStatus | None) -> dict[str, Any] | None:
        if ray_status is not None and ray_status.running == 0:
            return None  # no replica running: asking would wait for one
        try:
            report = await asyncio.wait_for(self.handles[unit.name].state.remote(), 2.0)
        except Exception:  # no running replica yet, or it died: Ray's status says which
            return None
        if unit.remote is not None:  # a shared model reports its node under its own id
            node = unit.remote.alias.node
            report = report | {"nodes": {node: next(iter(report["nodes"].values()), None)}}
            if report.get("stuck"):
                report["stuck"] = report["stuck"] | {"node": node}
        return report

    def _moving(self, statuses: Mapping[str, RayStatus]) -> set[str]:
        """Units one of whose replicas is moving to another machine (`serve.cluster.respread`):
        Ray calls them UNHEALTHY while it replaces that replica. Only while the move can
        still be under way (three failed health checks, then a load) and Ray is starting
        no more than that one replica: a crash meanwhile is not hidden as a move."""
        found = set()
        for unit in self.compiled.units:
            status = statuses.get(unit.name)
            if status is None or status.status != "UNHEALTHY" or status.starting > 1 or status.running == 0:
                continue
            app, deployment = (unit.remote.app, unit.remote.deployment) if unit.remote else (self.app_name, unit.name)
            try:
                move = claimed(app, deployment)
            except Exception:  # the GCS is busy: Ray's status stands
                continue
            if move is not None and time.time() - move.at < 3 * self.check_period_s + 2 * self._load_s(unit) + 30.0:
                found.add(unit.name)
        return found

    def _load_s(self, unit: Unit) -> float:
        """How long a replica of the unit took to load and warm its nodes (60 s unknown)."""
        nodes = (self.reports.get(unit.name) or {}).get("nodes", {})
        took = [n.get("load_s", 0.0) + n.get("warmup_s", 0.0) for n in nodes.values() if n]
        return sum(took) if took else 60.0

    def ray_statuses(self) -> dict[str, RayStatus]:
        """Ray's status of each deployment, how many of its replicas are running, and why;
        a unit another application runs (a shared model) under the unit's name."""
        try:
            apps = serve.status().applications
        except Exception:
            return {}

        def status(app_name: str, deployment: str) -> RayStatus | None:
            app = apps.get(app_name)
            d = app.deployments.get(deployment) if app else None
            if d is None:
                return None
            states = {_value(s): n for s, n in d.replica_states.items()}
            return RayStatus(
                _value(d.status),
                states.get("RUNNING", 0),
                d.message or "",
                sum(states.get(s, 0) for s in ("STARTING", "UPDATING", "RECOVERING")),
            )

        own = apps.get(self.app_name)
        found = {name: status(self.app_name, name) for name in (own.deployments if own else {})}
        for unit in self.compiled.units:
            if unit.remote is not None:
                found[unit.name] = status(unit.remote.app, unit.remote.deployment)
        return {name: s for name, s in found.items() if s is not None}

    async def watch(self) -> None:
        """Log when the graph turns healthy, and every change after that. Polls every
        second while unhealthy, else every `check_period_s` (1 to 5 s): a hung replica
        reports itself for at least two of Ray's check periods before Ray replaces it, so
        the ingress sees which node it was even when no one asks /health."""
        capability = self.compiled.plan.capability
        was: bool | None = None
        while True:
            ready, nodes = await self.check()
            if ready != was:
                took = time.monotonic() - self.started
                if ready:
                    self.healthy_since = self.healthy_since or took
                    log.info(
                        "capgraph: capability '%s' is healthy (%d nodes loaded and warm) "
                        "%.1fs after the ingress started",
                        capability,
                        len(nodes),
                        took,
                    )
                elif was is not None:
                    log.warning("capgraph: capability '%s' is no longer healthy: %s", capability, nodes)
                was = ready
            await asyncio.sleep(1.0 if not ready else max(1.0, min(5.0, self.check_period_s)))


def _serving(report: Mapping[str, Any] | None, node_id: str) -> bool:
    """Whether a running replica says it has the node loaded and warm."""
    node = (report or {}).get("nodes", {}).get(node_id)
    return bool(node and node.get("loaded") and node.get("warm") and not unusable(report))


def _node_state(
    report: Mapping[str, Any] | None, node_id: str, ray_status: str | None, serving: bool, was_healthy: bool
) -> str:
    """ok, updating, moving, loading, unhealthy or failed, from what the replica says and
    what Ray says. `updating`: Ray is rolling out a new version; the node still serves as
    long as one replica of either version is warm. `moving` (Ray's UNHEALTHY while one
    replica moves to another machine on purpose, `serve.cluster.respread`): the others serve."""
    if ray_status == "DEPLOY_FAILED":
        return "failed"
    if ray_status == "MOVING":
        return "moving" if serving else "unhealthy"
    if ray_status == "UNHEALTHY" or unusable(report):
        return "unhealthy"
    if ray_status == "UPDATING" and (serving or was_healthy):
        return "updating"
    if not serving:
        return "loading" if ray_status in (None, "UPDATING") else "unhealthy"
    if ray_status is not None and ray_status not in READY:
        return "loading"
    return "ok"


def _value(enum: Any) -> str:
    return str(getattr(enum, "value", enum))
