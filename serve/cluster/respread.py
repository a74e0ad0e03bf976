"""Replicas spread again when a machine returns.

Ray never moves a running replica, so after a lost machine comes back one replica at a
time fails its health check on purpose and Ray restarts it where there is room; /health
calls the node `moving` meanwhile. `CAPGRAPH_RESPREAD=0` turns it off.
docs/cluster.md ("When the machine comes back") has the rules.
"""

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("ray.serve")

CHECK_EVERY_S = 10.0
"""How often a replica looks at where its deployment's replicas run (at its health checks)."""
COOLDOWN_S, COOLDOWN_MAX_S = 30.0, 960.0
"""The wait before a deployment's next move: 30 s, doubled by each move in a row that did not
leave the replicas spread, at most 16 minutes."""
LOSS_SLACK_S = 30.0
"""A machine's loss is noticed at the next look after Ray declared it dead (up to
`CHECK_EVERY_S` later), and its replacement replicas may start before that look."""
REPLACED_WITHIN_S = 600.0
"""A replica started this long after a machine was lost is no replacement for one lost with it."""
STALE_S = 300.0
"""A claim older than this is dropped whatever became of it (its replica never moved, or its
replacement found no room): /health then says what Ray says of the deployment again."""
NAMESPACE = b"capgraph"


def enabled() -> bool:
    return os.environ.get("CAPGRAPH_RESPREAD", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Replica:
    id: str
    machine: str
    """Ray's node id."""
    started: float


@dataclass(frozen=True)
class Move:
    """A claimed move of one of a deployment's replicas (what the KV store holds)."""

    replica: str
    machine: str
    at: float
    """Wall-clock time of the claim: replicas on several machines read it."""


@dataclass(frozen=True)
class Machines:
    """What the replicas have seen of the cluster's machines (kept in Ray's KV store)."""

    joined: dict[str, float]
    """Ray node id -> wall-clock time it was first seen (0: there at the first look). A
    machine back from a loss rejoins as a new Ray node."""
    lost: tuple[float, ...] = ()
    """When machines were first seen dead (Ray's node table), the latest last."""

    def could_move(self, started: float) -> bool:
        """Whether a replica whose process started at `started` could be one to move (it
        started after a loss, and a machine joined after it started), with room for Ray
        having started it a little before its process."""
        return after_a_loss(started, self.lost) and any(t > started - LOSS_SLACK_S for t in self.joined.values())


def after_a_loss(started: float, lost: Sequence[float]) -> bool:
    """Whether a replica started at `started` could be the replacement of one lost with a
    machine: started shortly before that loss was seen, or within `REPLACED_WITHIN_S` after."""
    return any(t - LOSS_SLACK_S < started < t + REPLACED_WITHIN_S for t in lost)


def mover(
    replicas: Sequence[Replica], room: Mapping[str, bool], machines: Machines, moved_at: float | None = None
) -> str | None:
    """The replica that should move, or None when the replicas are spread: the newest on
    the most crowded machine, when it started after a machine was lost and a machine with
    room for one more replica (`room`: each live machine) that joined the cluster after it
    started holds at least two fewer. `moved_at`: when the deployment's last move was
    claimed, if lately; a replica started after it is that move's replacement, back on the
    crowded machine: it tries again for the same machine."""
    if not replicas:
        return None
    counts = Counter(r.machine for r in replicas)
    most = max(counts.values())
    newest = max((r for r in replicas if counts[r.machine] == most), key=lambda r: (r.started, r.id))
    again = moved_at is not None and newest.started > moved_at
    if not again and not after_a_loss(newest.started, machines.lost):
        return None
    if any(
        ok and counts.get(machine, 0) <= most - 2 and (again or machines.joined.get(machine, 0.0) > newest.started)
        for machine, ok in room.items()
    ):
        return newest.id
    return None


def fits(available: Mapping[str, float], request: Mapping[str, float]) -> bool:
    """Whether a machine with `available` resources can start a replica asking `request`
    (Ray's names: CPU, GPU, memory, custom resources)."""
    return all(available.get(name, 0.0) + 1e-9 >= amount for name, amount in request.items() if amount > 0)


def request_of(actor_options: Mapping[str, Any]) -> dict[str, float]:
    """Ray's resource names for a deployment's `ray_actor_options`."""
    wanted = {
        "CPU": actor_options.get("num_cpus") or 0.0,
        "GPU": actor_options.get("num_gpus") or 0.0,
        "memory": actor_options.get("memory") or 0.0,
    }
    return wanted | dict(actor_options.get("resources") or {})


def claimed(app: str, deployment: str, tidy: bool = False) -> Move | None:
    """The deployment's move in progress, if any (a claim younger than `STALE_S`). `tidy`
    (the deployment's own replicas only): drop an unreadable or stale claim, which blocks
    later moves; a reader that dropped one could drop a new claim put meanwhile."""
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(_key(app, deployment, "move"), namespace=NAMESPACE)
    if not raw:
        return None
    try:
        move: Move | None = Move(**json.loads(raw))
    except (ValueError, TypeError):
        move = None
    if move is None or time.time() - move.at > STALE_S:
        if tidy:
            internal_kv._internal_kv_del(_key(app, deployment, "move"), namespace=NAMESPACE)
        return None
    return move


class Respread:
    """One node replica's look at its deployment's placement (call `check` from its health check)."""

    def __init__(self) -> None:
        import ray
        from ray import serve

        context = serve.get_replica_context()
        self.app, self.deployment = context.app_name, context.deployment
        self.replica = context.replica_id.unique_id
        self.machine = ray.get_runtime_context().get_node_id()
        self.started = _process_started()
        """When this replica's process started (Ray's start time of the replica is a moment earlier)."""
        self.next_check = time.monotonic() + CHECK_EVERY_S

    def due(self) -> bool:
        return time.monotonic() >= self.next_check - 1.0  # health checks come every ~10 s, not to the millisecond

    def check(self) -> str | None:
        """Why this replica must move now (it has claimed the move), or None. Blocking:
        it asks Ray's controller and GCS."""
        import ray
        from ray._private.state import available_resources_per_node
        from ray.experimental import internal_kv
        from ray.serve.context import _get_global_client

        self.next_check = time.monotonic() + CHECK_EVERY_S
        nodes = ray.nodes()
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        machines = _note_machines(alive, [n["NodeID"] for n in nodes if not n.get("Alive") and not _drained_idle(n)])
        last_key = _key(self.app, self.deployment, "last")
        last = json.loads(internal_kv._internal_kv_get(last_key, namespace=NAMESPACE) or b"{}")
        moved_at = (
            last.get("at", 0.0) if last.get("moves") and time.time() - last.get("at", 0.0) < REPLACED_WITHIN_S else None
        )
        if len(alive) < 2 or (moved_at is None and not machines.could_move(self.started)):
            return None  # not the one to move: spare the controller the question below
        details = _get_global_client().get_serve_details()
        deployment = details.get("applications", {}).get(self.app, {}).get("deployments", {}).get(self.deployment)
        if not deployment or deployment.get("status") != "HEALTHY":
            return None  # starting, scaling, updating or replacing: not now
        running = [
            Replica(r["replica_id"], r["node_id"], r.get("start_time_s") or 0.0)
            for r in deployment.get("replicas", [])
            if r.get("state") == "RUNNING" and r.get("node_id") in alive
        ]
        move_key = _key(self.app, self.deployment, "move")
        move = claimed(self.app, self.deployment, tidy=True)
        if move is not None:
            if move.replica in {r.id for r in running}:
                return None  # still going
            internal_kv._internal_kv_del(move_key, namespace=NAMESPACE)  # it went and Ray has its replacement running
        available = available_resources_per_node()
        request = deployment.get("required_resources") or request_of(
            deployment.get("deployment_config", {}).get("ray_actor_options") or {}
        )
        room = {machine: fits(available.get(machine, {}), request) for machine in alive}
        chosen = mover(running, room, machines, moved_at)
        if chosen is None:
            if last.get("moves"):
                internal_kv._internal_kv_put(
                    last_key, json.dumps({"at": last.get("at", 0), "moves": 0}), namespace=NAMESPACE
                )
            return None
        if chosen != self.replica:
            return None
        moves = int(last.get("moves", 0))
        if moves and time.time() < last.get("at", 0) + min(COOLDOWN_MAX_S, COOLDOWN_S * 2 ** (moves - 1)):
            return None
        now = time.time()
        if internal_kv._internal_kv_put(
            move_key, json.dumps(asdict(Move(self.replica, self.machine, now))), overwrite=False, namespace=NAMESPACE
        ):
            return None  # another replica claimed a move first
        internal_kv._internal_kv_put(last_key, json.dumps({"at": now, "moves": moves + 1}), namespace=NAMESPACE)
        counts = Counter(r.machine for r in running)
        emptiest = min((m for m in alive if room[m]), key=lambda m: counts.get(m, 0))
        return (
            f"deployment '{self.deployment}' has {counts[self.machine]} replicas "
            f"on machine {_name(alive, self.machine)} and {counts.get(emptiest, 0)} "
            f"on machine {_name(alive, emptiest)}, which has room for one: this replica moves "
            "(Ray finishes its frames and starts its replacement where there is room)"
        )


def _note_machines(alive: Iterable[str], dead: Iterable[str]) -> Machines:
    """When each live machine was first seen (wall-clock; 0: there at the first look) and
    when each dead one (Ray keeps them in its node table) was first seen dead, kept in
    Ray's KV store for the cluster. Written only when the machines change. A machine dead
    at the very first look counts as lost then: it may have gone just before."""
    from ray.experimental import internal_kv

    key = b"respread/machines"
    raw = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
    record = json.loads(raw) if raw else {}
    seen: dict[str, float] = record.get("joined", {})
    gone: dict[str, float] = record.get("lost", {})
    now = time.time()
    joined = {machine: seen.get(machine, now if raw else 0.0) for machine in alive}
    lost = {machine: gone.get(machine, now) for machine in dead}  # as many as Ray keeps in its node table
    if joined != seen or lost != gone:
        internal_kv._internal_kv_put(key, json.dumps({"joined": joined, "lost": lost}), namespace=NAMESPACE)
    return Machines(joined, tuple(sorted(lost.values())))


def _drained_idle(node: Mapping[str, Any]) -> bool:
    """A machine the autoscaler removed because it was idle: no replica was lost with it."""
    return node.get("DeathReason") in (4, "AUTOSCALER_DRAIN_IDLE")


def _process_started() -> float:
    import psutil

    return psutil.Process().create_time()


def _key(app: str, deployment: str, what: str) -> bytes:
    return f"respread/{app}/{deployment}/{what}".encode()


def _name(alive: Mapping[str, Mapping[str, Any]], machine: str) -> str:
    node = alive.get(machine, {})
    return f"{node.get('NodeManagerAddress', '?')} ({machine[:8]})"
