"""The placement planner: which nodes share a deployment, and how each batches, how many
threads and CPUs it takes and how many requests Ray may send it, chosen from the nodes'
costs. The graph file wins, then the tuned overlay, then this planner. Pure data, no Ray
and no torch, so every choice can be tested. docs/planner.md has each rule and its reason.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from capgraph.engine.plan import Plan, PlannedNode
from capgraph.engine.spec import Autoscale, Batch

Fuse = Literal["auto", "groups", "all", "none"]
Origin = Literal["graph", "tuned", "planner"]

HEAVY_SHARE = 0.5
HOP_MS = 5.0
"""About what a hop between deployments costs a frame (measured: 4 to 9 ms on 2 CPUs); a
stage cheaper than that never pays for a deployment of its own."""
BATCH_SLACK = 0.05
WAIT_SHARE = 0.05
MAX_WAIT_MS = 10.0
ONGOING_BATCHES = 4
MIN_ONGOING = 8
CPUS_PER_REPLICA = 1.0
MAX_CPU_REPLICAS = 4
MEMORY_SHARE = 0.5
"""Of the machine's memory, what the replicas of one deployment may fill with weights."""
GPU_UNIT_MAX_CPUS = 2.0
CPU_STEP = 0.25
FINE_STEP = 0.05
"""The step of a reservation smaller than `CPU_STEP`, on a machine too crowded for a
`CPU_STEP` each: threads follow the load (`serve.cluster.cores`), so a small reservation
still uses idle cores."""
MIN_CPUS = 0.05
"""The least CPU a deployment's replica reserves."""
DEFAULT_NODE_CPUS = 0.25
"""Per deployment where the cluster is unknown: Ray's default of 1 would leave a 2-core
laptop able to start only two."""

MODEL_MS = 30.0
"""A model family with no declared cost."""
LIGHT_MS = 1.0
"""A family that runs no model (resize, canny, composite...)."""


@dataclass(frozen=True)
class Cost:
    """What one node costs: milliseconds per batch, by batch size."""

    batch_ms: Mapping[int, float]
    source: Literal["measured", "declared"] = "declared"

    def ms(self, batch: int) -> float:
        """Milliseconds for a batch of `batch` frames, interpolated between measured sizes
        and extrapolated at the per-frame rate of the nearest one."""
        sizes = sorted(self.batch_ms)
        if batch in self.batch_ms:
            return self.batch_ms[batch]
        if batch < sizes[0] or batch > sizes[-1]:
            edge = sizes[0] if batch < sizes[0] else sizes[-1]
            return self.batch_ms[edge] * batch / edge
        above = next(s for s in sizes if s > batch)
        below = max(s for s in sizes if s < batch)
        t = (batch - below) / (above - below)
        return self.batch_ms[below] * (1 - t) + self.batch_ms[above] * t

    def per_frame(self, batch: int = 1) -> float:
        return self.ms(batch) / batch


def declared_cost(node: PlannedNode) -> Cost:
    """A family's own `cost_ms`, else light or model defaults."""
    family = node.family
    ms = family.cost_ms or (MODEL_MS if family.uses_gpu else LIGHT_MS)
    return Cost({1: float(ms)}, "declared")


@dataclass(frozen=True)
class NodeSettings:
    """A node's placement fields as written in the graph, or else in the tuned overlay."""

    group: str | None = None
    batch: Batch | None = None
    gpu: float | None = None
    cpu: float | None = None
    replicas: int | Autoscale | None = None
    source: Mapping[str, Origin] = field(default_factory=dict)
    """Where each set field came from ('graph' or 'tuned')."""
    shared: bool = False
    """Its model runs in an application shared with other graphs (`serve.compile.sharing`)."""

    @property
    def apart(self) -> bool:
        """Its own resources or replicas, and no group, or a shared model: it keeps a
        deployment of its own."""
        scaled = self.replicas is not None and self.replicas != 1
        return self.shared or (self.group is None and (scaled or self.gpu is not None or self.cpu is not None))


def node_settings(
    plan: Plan, tuned: Mapping[str, Mapping[str, Any]] | None = None, shared: frozenset[str] = frozenset()
) -> dict[str, NodeSettings]:
    """Each node's settings: the graph's own fields, then the tuned overlay's for the rest.
    `shared` nodes run in another application: never fused, their group ignored."""
    result = {}
    for node_id, node in plan.nodes.items():
        spec, extra = node.spec, (tuned or {}).get(node_id, {})
        written = {
            "group": spec.group,
            "batch": spec.batch,
            "gpu": spec.resources.gpu,
            "cpu": spec.resources.cpu,
            "replicas": spec.replicas if spec.replicas != 1 else None,
        }
        from_overlay = {
            "group": extra.get("group"),
            "batch": Batch.model_validate(extra["batch"]) if extra.get("batch") is not None else None,
            "gpu": (extra.get("resources") or {}).get("gpu"),
            "cpu": (extra.get("resources") or {}).get("cpu"),
            "replicas": _replicas(extra.get("replicas")),
        }
        values, source = {}, {}
        for key, value in written.items():
            if value is not None:
                values[key], source[key] = value, "graph"
            elif from_overlay[key] is not None:
                values[key], source[key] = from_overlay[key], "tuned"
        if node_id in shared:
            values.pop("group", None)
        result[node_id] = NodeSettings(**values, source=source, shared=node_id in shared)
    return result


def _replicas(value: Any) -> int | Autoscale | None:
    if value is None or isinstance(value, int):
        return value
    return Autoscale.model_validate(value)


# -- fusion --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """One deployment-to-be: a name, its nodes in plan order, and why they are together."""

    name: str
    nodes: tuple[str, ...]
    why: str = ""


def place(
    plan: Plan, settings: Mapping[str, NodeSettings], costs: Mapping[str, Cost], fuse: Fuse = "auto"
) -> list[Placement]:
    """Which nodes share a deployment. `fuse`: auto (the rules above), groups (only the
    written groups), all (one deployment), none (one per node, groups ignored)."""
    order = list(plan.nodes)
    if fuse == "all":
        return [
            Placement(
                plan.capability.replace("-", "_"), tuple(order), "fuse: all puts the whole graph in one deployment"
            )
        ]
    if fuse == "none":
        return [Placement(n, (n,), "fuse: none gives every node its own deployment") for n in order]
    groups: dict[str, list[str]] = {}
    for node_id in order:
        group = settings[node_id].group
        if group is not None:
            groups.setdefault(group, []).append(node_id)
    placements: dict[str, Placement] = {}
    for group, members in groups.items():
        name = group if group not in plan.nodes or settings[group].group == group else f"{group}_group"
        where = {settings[m].source.get("group") for m in members}
        placements[members[0]] = Placement(name, tuple(members), f"group '{group}' ({' and '.join(sorted(where))})")
    free = [n for n in order if settings[n].group is None]
    if fuse == "groups":
        for node_id in free:
            placements[node_id] = Placement(node_id, (node_id,), "its own deployment (fuse: groups)")
        return _in_order(placements, order)
    for node_id in free:
        if settings[node_id].apart:
            placements[node_id] = Placement(node_id, (node_id,), _apart_reason(settings[node_id]))
    bottleneck = max(order, key=lambda n: costs[n].per_frame())
    worst = costs[bottleneck].per_frame()
    for run in _free_runs(order, settings):
        for segment in _segments(run, costs, worst):
            anchor = max(segment, key=lambda n: costs[n].per_frame())
            placements[segment[0]] = Placement(
                anchor, tuple(segment), _fusion_reason(segment, anchor, bottleneck, costs)
            )
    return _in_order(placements, order)


def _in_order(placements: Mapping[str, Placement], order: Sequence[str]) -> list[Placement]:
    taken: set[str] = set()
    result = []
    for first in sorted(placements, key=order.index):
        p = placements[first]
        name = p.name
        while name in taken:
            name += "_"
        taken.add(name)
        result.append(Placement(name, p.nodes, p.why))
    return result


def _free_runs(order: Sequence[str], settings: Mapping[str, NodeSettings]) -> list[list[str]]:
    """Maximal stretches of the plan order holding only nodes the planner may fuse.
    Fusing only within a stretch keeps deployments free of cycles: a path that leaves a
    stretch only reaches nodes after it."""
    runs: list[list[str]] = [[]]
    for node_id in order:
        s = settings[node_id]
        if s.group is None and not s.apart:
            runs[-1].append(node_id)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _segments(run: Sequence[str], costs: Mapping[str, Cost], worst: float) -> list[list[str]]:
    """A run cut before each heavy node after the first one; cheap nodes stay with the
    heavy node before them (or the first heavy node, at the start of the run)."""
    segments: list[list[str]] = [[]]
    seen_heavy = False
    for node_id in run:
        heavy = costs[node_id].per_frame() >= max(HEAVY_SHARE * worst, HOP_MS)
        if heavy and seen_heavy:
            segments.append([])
        seen_heavy = seen_heavy or heavy
        segments[-1].append(node_id)
    return segments


def _apart_reason(s: NodeSettings) -> str:
    if s.shared:
        return "its own deployment: its model is shared with other graphs"
    fields = [
        f
        for f, v in (("resources", s.gpu if s.gpu is not None else s.cpu), ("replicas", s.replicas))
        if v is not None and v != 1
    ]
    where = " and ".join(sorted({s.source.get(k, "graph") for k in ("gpu", "cpu", "replicas") if k in s.source}))
    return f"its own deployment: it sets its own {' and '.join(fields)} ({where})"


def _fusion_reason(segment: Sequence[str], anchor: str, bottleneck: str, costs: Mapping[str, Cost]) -> str:
    measured = "measured" if all(costs[n].source == "measured" for n in segment) else "declared"
    if len(segment) == 1:
        ms = f"{costs[anchor].per_frame():.3g} ms a frame ({measured})"
        if anchor == bottleneck:
            return f"its own deployment: {ms}, the bottleneck"
        if costs[anchor].per_frame() >= max(HEAVY_SHARE * costs[bottleneck].per_frame(), HOP_MS):
            return f"its own deployment: {ms}, at least {HEAVY_SHARE:.0%} of {bottleneck}'s, so pipelining the two pays"
        return f"its own deployment: {ms}; its neighbours keep deployments of their own"
    cheap = [n for n in segment if n != anchor]
    top = max(cheap, key=lambda n: costs[n].per_frame())
    share = costs[top].per_frame() / costs[bottleneck].per_frame()
    return (
        f"{', '.join(cheap)} fused with {anchor}: each costs at most {share:.0%} of {bottleneck}'s "
        f"{costs[bottleneck].per_frame():.3g} ms a frame ({measured}), less than a hop and a batch wait would cost"
    )


# -- sizing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizing:
    """How one deployment batches and what it asks Ray for (GPU fractions aside)."""

    max_batch_size: int
    batch_wait_s: float
    max_ongoing_requests: int
    num_cpus: float
    threads: int
    replicas: int | Autoscale
    why: tuple[str, ...]
    chunks: Mapping[str, int] = field(default_factory=dict)
    """Nodes that run the deployment's batch in smaller chunks: node id -> chunk size."""


@dataclass(frozen=True)
class Machine:
    """What the planner needs to know of the cluster."""

    cpus: float
    """CPUs of the largest machine, less what the ingress takes."""
    gpus: bool
    memory_bytes: float = 0.0
    """Memory of that machine (0: unknown)."""


def machine_for(machines: Sequence[tuple[float, float]], gpus: int, ingress_cpus: float) -> Machine:
    """The planner's view of a cluster from (CPUs, memory bytes) per machine: the largest
    machine less the ingress's CPUs (a graph's deployments are sized to fit one machine),
    and whether there are GPUs."""
    cpus, memory = max(machines, default=(1.0, 0.0))
    return Machine(max(cpus - ingress_cpus, MIN_CPUS), gpus > 0, memory)


def unit_ms(nodes: Sequence[str], costs: Mapping[str, Cost], batch: int) -> float:
    return sum(costs[n].ms(batch) for n in nodes)


@dataclass(frozen=True)
class Batching:
    """How one deployment batches: up to `size` frames, a lone frame waits `wait_s`, and
    node `n` runs them in chunks of `chunks[n]` frames where that is smaller."""

    size: int
    wait_s: float
    chunks: Mapping[str, int]
    why: str


def choose_batch(
    plan: Plan, nodes: Sequence[str], settings: Mapping[str, NodeSettings], costs: Mapping[str, Cost]
) -> Batching:
    """The deployment's batch is its costliest node's: as written, else measured (the
    smallest within `BATCH_SLACK` of the best time a frame, every node at its own best
    chunk), else its family's `max_batch`. Every other node runs that batch in chunks of
    its own limit (as written, else its best measured size, else its family's)."""
    anchor = max(nodes, key=lambda n: costs[n].per_frame())
    written = {n: settings[n].batch for n in nodes if settings[n].batch is not None}
    measured = all(costs[n].source == "measured" for n in nodes)
    sizes = sorted(set.intersection(*(set(costs[n].batch_ms) for n in nodes)))
    if anchor in written:
        size = written[anchor].max_size
        why = f"batch {size}, {anchor}'s ({settings[anchor].source['batch']})"
    elif measured and len(sizes) > 1:
        best = min(chunked_ms(plan, nodes, settings, costs, b) / b for b in sizes)
        size = next(b for b in sizes if chunked_ms(plan, nodes, settings, costs, b) / b <= best * (1 + BATCH_SLACK))
        why = (
            f"batch {size}: {chunked_ms(plan, nodes, settings, costs, size) / size:.3g} ms a frame, "
            f"within {BATCH_SLACK:.0%} of the best measured ({best:.3g} ms, batches up to {sizes[-1]})"
        )
    else:
        size = plan.nodes[anchor].family.max_batch
        why = f"batch {size}: the {plan.nodes[anchor].family.type} family's limit ({anchor} costs the most)"
    chunks = {n: c for n in nodes if (c := node_chunk(plan, n, settings[n], costs[n], size)) < size}
    if chunks:
        why += "; " + ", ".join(f"{n} in chunks of {c}" for n, c in chunks.items())
    if written:
        where = " and ".join(sorted({settings[n].source["batch"] for n in written}))
        wait_ms = max(b.wait_ms for b in written.values())
        wait_why = f"wait {wait_ms:g} ms ({where})"
    elif _fed_by_ingress(plan, nodes):
        wait_ms, wait_why = (
            0.0,
            "no wait: its frames come from independent callers, so waiting for company only adds latency",
        )
    else:
        one = unit_ms(nodes, costs, 1)
        wait_ms = round(min(MAX_WAIT_MS, WAIT_SHARE * one), 1)
        wait_why = (
            f"wait {wait_ms:g} ms ({WAIT_SHARE:.0%} of {one:.3g} ms for one frame) for the frames of an upstream batch"
        )
    return Batching(size, wait_ms / 1000.0, chunks, f"{why}; {wait_why}")


def node_chunk(plan: Plan, node_id: str, settings: NodeSettings, cost: Cost, batch: int) -> int:
    """The most frames one node takes per `run_batch` call in a deployment batching
    `batch`: its written `max_size`, else the largest measured size within `BATCH_SLACK`
    of its best time a frame (fewer calls for the same speed), else its family's limit."""
    if settings.batch is not None:
        return min(batch, settings.batch.max_size)
    if cost.source == "measured" and len(cost.batch_ms) > 1:
        sizes = [b for b in sorted(cost.batch_ms) if b <= batch] or [min(cost.batch_ms)]
        best = min(cost.per_frame(b) for b in sizes)
        return min(batch, max(b for b in sizes if cost.per_frame(b) <= best * (1 + BATCH_SLACK)))
    return min(batch, plan.nodes[node_id].family.max_batch)


def chunked_ms(
    plan: Plan, nodes: Sequence[str], settings: Mapping[str, NodeSettings], costs: Mapping[str, Cost], batch: int
) -> float:
    """Milliseconds for a deployment batch, every node running it in its own chunks."""
    total = 0.0
    for n in nodes:
        chunk = node_chunk(plan, n, settings[n], costs[n], batch)
        total += math.ceil(batch / chunk) * costs[n].ms(chunk)
    return total


def _fed_by_ingress(plan: Plan, nodes: Sequence[str]) -> bool:
    """Whether the unit reads graph inputs only, none of another deployment's outputs."""
    mine = set(nodes)
    return all(src.node is None or src.node in mine for n in nodes for src in plan.nodes[n].inputs.values())


def size_units(
    plan: Plan,
    placements: Sequence[Placement],
    settings: Mapping[str, NodeSettings],
    costs: Mapping[str, Cost],
    machine: Machine | None,
    *,
    batching: bool = True,
    on_gpu: Mapping[str, bool] | None = None,
    weights: Mapping[str, int | None] | None = None,
    elsewhere: frozenset[str] = frozenset(),
) -> dict[str, Sizing]:
    """Batch, wait, threads, CPUs and replicas of every placement. `machine` None: the
    cluster is unknown, every deployment asks for `DEFAULT_NODE_CPUS` and one thread.
    `on_gpu[name]`: whether the deployment will hold a GPU fraction; `weights[name]`: the
    bytes of its weight files (None: unknown), which bound its CPU replicas. `elsewhere`:
    deployments another application runs (a shared model), which take none of this one's CPUs."""
    on_gpu = on_gpu or {}
    shares = _cpu_shares(placements, settings, costs, machine, on_gpu, weights or {}, elsewhere)
    result = {}
    for p in placements:
        why = [p.why] if p.why else []
        batch = (
            choose_batch(plan, p.nodes, settings, costs)
            if batching
            else Batching(1, 0.0, {}, "batching off: every frame runs alone")
        )
        size = batch.size
        why.append(batch.why)
        ongoing = max(ONGOING_BATCHES * size, MIN_ONGOING)
        why.append(
            f"max_ongoing_requests {ongoing}: {ONGOING_BATCHES} batches of {size} "
            "(one running, one filling, two queued)"
        )
        cpus, threads, replicas, reason = shares[p.name]
        why.append(reason)
        result[p.name] = Sizing(size, batch.wait_s, ongoing, cpus, threads, replicas, tuple(why), dict(batch.chunks))
    return result


def _cpu_shares(
    placements: Sequence[Placement],
    settings: Mapping[str, NodeSettings],
    costs: Mapping[str, Cost],
    machine: Machine | None,
    on_gpu: Mapping[str, bool],
    weights: Mapping[str, int | None],
    elsewhere: frozenset[str] = frozenset(),
) -> dict[str, tuple[float, int, int | Autoscale, str]]:
    written_replicas = {p.name: _written_replicas(p, settings) for p in placements}
    written_cpus = {
        p.name: max((settings[n].cpu for n in p.nodes if settings[n].cpu is not None), default=None) for p in placements
    }
    result: dict[str, tuple[float, int, int | Autoscale, str]] = {
        p.name: (0.0, 1, 1, "runs in another application") for p in placements if p.name in elsewhere
    }
    for p in placements:
        if p.name in elsewhere:
            continue
        if written_cpus[p.name] is not None:
            cpus = written_cpus[p.name]
            result[p.name] = (
                cpus,
                threads_for(cpus),
                written_replicas[p.name] or 1,
                f"{cpus:g} CPU as written, {threads_for(cpus)} torch threads",
            )
        elif machine is None:
            result[p.name] = (
                DEFAULT_NODE_CPUS,
                1,
                written_replicas[p.name] or 1,
                f"{DEFAULT_NODE_CPUS:g} CPU and 1 thread (cluster unknown)",
            )
    sharing = [p for p in placements if p.name not in result]
    if not sharing or machine is None:
        return result
    budget = machine.cpus - sum(result[name][0] * _most(result[name][2]) for name in result)
    weight = {p.name: unit_ms(p.nodes, costs, 1) for p in sharing}
    total = sum(weight.values()) or 1.0
    # every replica the deployments may scale to gets a floor (a `CPU_STEP`, less where the
    # machine is too crowded for that), the rest goes by cost
    slots = {p.name: _most(written_replicas[p.name] or 1) for p in sharing}
    floor = _round_down(min(CPU_STEP, max(budget, 0.0) / sum(slots.values())))
    spare = max(0.0, budget - floor * sum(slots.values()))
    for p in sharing:
        share = floor * slots[p.name] + spare * weight[p.name] / total
        gpu = machine.gpus and on_gpu.get(p.name, False)
        replicas, why = written_replicas[p.name], ""
        if replicas is not None:
            per_replica = share / _most(replicas)
            if isinstance(replicas, Autoscale) and replicas.max > replicas.min:
                why = f"; sized so all {replicas.max} replicas it may scale to fit beside the others"
        elif gpu:
            replicas, per_replica = 1, min(share, GPU_UNIT_MAX_CPUS)
        else:
            replicas, why = _cpu_replicas(share, weights.get(p.name), machine)
            per_replica = share / replicas
        cpus = _round_down(per_replica)
        threads = threads_for(cpus)
        note = (
            f"{cpus:g} CPU and {threads} torch thread{'s' if threads != 1 else ''} a replica: "
            f"by cost, {weight[p.name] / total:.0%} of the {machine.cpus:g} CPU left beside the ingress"
            + (f", at most {GPU_UNIT_MAX_CPUS:g} beside a GPU" if gpu else "")
        )
        result[p.name] = (cpus, threads, replicas, note + why)
    return result


def _round_down(cpus: float) -> float:
    """A reservation in steps of `CPU_STEP`, or of `FINE_STEP` below one step, at least `MIN_CPUS`."""
    step = CPU_STEP if cpus >= CPU_STEP - 1e-9 else FINE_STEP
    return round(max(MIN_CPUS, math.floor(cpus / step + 1e-9) * step), 4)


def _cpu_replicas(share: float, weight_bytes: int | None, machine: Machine) -> tuple[int, str]:
    """Replicas for a CPU deployment: about one per CPU of its share, at most
    `MAX_CPU_REPLICAS`, and only as many as memory holds (weights twice over each)."""
    wanted = min(MAX_CPU_REPLICAS, max(1, round(share / CPUS_PER_REPLICA)))
    if wanted == 1:
        return 1, ""
    if weight_bytes is None or not machine.memory_bytes:
        return 1, "; one replica: its weights' size or the machine's memory is unknown"
    fits = int(machine.memory_bytes * MEMORY_SHARE // max(2 * weight_bytes, 1))
    replicas = max(1, min(wanted, fits))
    why = (
        f"; {replicas} replicas of about {share / replicas:.2g} CPU: one thread each runs small models faster than one "
        f"replica with {threads_for(share)} threads, and does not stall when the cores are busy"
    )
    if replicas < wanted:
        why += f" (memory holds {fits})"
    return replicas, why


def _written_replicas(p: Placement, settings: Mapping[str, NodeSettings]) -> int | Autoscale | None:
    asked = [settings[n].replicas for n in p.nodes if settings[n].replicas is not None]
    scaling = [r for r in asked if isinstance(r, Autoscale)]
    if scaling:
        return max(scaling, key=lambda a: (a.max, a.min))
    return max(asked, default=None)  # type: ignore[type-var]


def _most(replicas: int | Autoscale) -> int:
    """The replicas a deployment may run at once: its autoscaling maximum, else its count."""
    return replicas.max if isinstance(replicas, Autoscale) else replicas


def threads_for(cpus: float) -> int:
    """Torch threads for a CPU share: whole cores, a share just over a core (1.25) stays
    at one thread, and a fraction of a core is one thread."""
    return max(1, math.ceil(cpus - CPU_STEP - 1e-9))
