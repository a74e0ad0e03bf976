"""From a validated Plan to deployment units: which nodes run in which Ray Serve
deployment, with what resources, batching and replicas, and each unit's GPU fraction.
Pure data, no Ray import, so the compiled shape can be tested without a cluster.
The fuse modes and the GPU-fraction rule are in docs/serving.md.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from capgraph.engine.errors import GraphError, GraphInvalid
from capgraph.engine.plan import Plan, PlannedNode, Source
from capgraph.engine.spec import Autoscale
from capgraph.serve.compile import planner
from capgraph.serve.compile.planner import DEFAULT_NODE_CPUS, Cost, Fuse, Machine, NodeSettings

GIB = 1 << 30
UNKNOWN_FRACTION = 0.25
DEFAULT_GPU_MEMORY_GIB = 24.0
AUTOSCALE_BATCHES = 2
DEFAULT_METRICS_INTERVAL_S = 10.0
"""Ray Serve's autoscaling metrics interval."""
INGRESS = "capgraph-ingress"
"""Name of the HTTP deployment; a hyphen keeps it apart from node ids and groups."""
__all__ = ["DEFAULT_NODE_CPUS", "Compiled", "Fuse", "Unit", "compile_plan", "gpu_fraction"]


@dataclass(frozen=True)
class Remote:
    """A deployment of another Serve application that runs one of this graph's nodes."""

    app: str
    deployment: str
    alias: Any
    """`serve.compile.sharing.Alias`: how this graph's frame maps onto that deployment's ports."""


@dataclass(frozen=True)
class Unit:
    """One Ray Serve deployment running one or more nodes, in topological order."""

    name: str
    nodes: tuple[str, ...]
    graph_inputs: tuple[str, ...]
    """Graph inputs the unit's nodes read directly."""
    upstream: tuple[str, ...]
    """Units whose results it reads, in plan order: its positional arguments."""
    exports: tuple[Source, ...]
    """Its node outputs that later units or the graph outputs read."""
    num_gpus: float = 0.0
    num_cpus: float = DEFAULT_NODE_CPUS
    threads: int = 1
    """Torch threads in each replica (`torch.set_num_threads`)."""
    replicas: int | Autoscale = 1
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    max_ongoing_requests: int = 16
    chunks: tuple[tuple[str, int], ...] = ()
    """Nodes that run a batch in smaller chunks, (node id, most frames per call)."""
    gpu_note: str = ""
    """How `num_gpus` was chosen, for logs and `capgraph plan`."""
    why: tuple[str, ...] = ()
    """The planner's reasons for this unit's shape and settings, one line each."""
    remote: "Remote | None" = None
    """Where the unit runs when another application runs it (a model shared between graphs,
    `serve.compile.sharing`): this application deploys nothing for it and asks for no resources."""

    @property
    def min_replicas(self) -> int:
        return self.replicas.min if isinstance(self.replicas, Autoscale) else self.replicas

    @property
    def max_replicas(self) -> int:
        """The replicas it may scale to: its autoscaling maximum, else its count."""
        return self.replicas.max if isinstance(self.replicas, Autoscale) else self.replicas

    @property
    def target_ongoing_requests(self) -> float | None:
        """What the autoscaler keeps each replica near: as written, else `AUTOSCALE_BATCHES`
        batches (one running, one filling), so that a batch can fill before a replica is added."""
        if not isinstance(self.replicas, Autoscale):
            return None
        return self.replicas.target_ongoing_requests or float(AUTOSCALE_BATCHES * self.max_batch_size)

    def deployment_options(self) -> dict:
        """Keyword arguments for `Deployment.options`."""
        options: dict = {
            "name": self.name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if isinstance(self.replicas, Autoscale):
            scale = self.replicas
            options["autoscaling_config"] = {
                "min_replicas": scale.min,
                "max_replicas": scale.max,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": scale.upscale_delay_s,
                "downscale_delay_s": scale.downscale_delay_s,
                "look_back_period_s": scale.look_back_period_s,
            }
            if scale.look_back_period_s <= DEFAULT_METRICS_INTERVAL_S:  # Ray wants the window longer than the interval
                options["autoscaling_config"]["metrics_interval_s"] = scale.look_back_period_s / 2
        else:
            options["num_replicas"] = self.replicas
        return options


@dataclass(frozen=True)
class Compiled:
    plan: Plan
    units: tuple[Unit, ...]
    """In topological order."""
    awaited: tuple[str, ...]
    """Units whose results the ingress awaits: those giving graph outputs, and those no
    other unit reads from (so a failure anywhere reaches the answer)."""
    warnings: tuple[str, ...] = field(default=())

    def unit(self, name: str) -> Unit:
        return next(u for u in self.units if u.name == name)

    def unit_of(self, node_id: str) -> Unit:
        return next(u for u in self.units if node_id in u.nodes)

    def on_cpu(self, reason: str) -> "Compiled":
        """The same units with every GPU ask dropped (a cluster with no GPU)."""
        units = tuple(replace(u, num_gpus=0.0, gpu_note=reason) if u.num_gpus else u for u in self.units)
        return replace(self, units=units)


def compile_plan(
    plan: Plan,
    *,
    fuse: Fuse = "auto",
    batching: bool = True,
    weight_bytes: Callable[[PlannedNode], int | None] | None = None,
    gpu_memory_gib: float | None = None,
    machine: Machine | None = None,
    tuned: Mapping[str, Mapping[str, Any]] | None = None,
    measured: Mapping[str, Cost] | None = None,
    remote: Mapping[str, Remote] | None = None,
) -> Compiled:
    """Group the plan's nodes into units and give each one its resources and batching.

    `machine` is the cluster as the planner sees it (None: unknown, every unit asks for
    0.25 CPU and one thread). `tuned` holds the tuned overlay's node settings and
    `measured` its measured costs (`serve.compile.overlay`). `weight_bytes(node)` estimates a model
    node's weights before loading (None: unknown); it is only called for model nodes
    without a GPU fraction. Raises GraphInvalid when groups would make the units depend
    on each other in a circle.
    """
    if weight_bytes is not None:
        weight_bytes = _memo(weight_bytes)
    warnings: list[str] = []
    remote = remote or {}
    if remote and fuse == "all":  # one deployment holds the whole graph: a shared node in it would make a circle
        warnings.append(
            f"fuse: all runs {', '.join(remote)} in this graph's own deployment, not shared with other graphs"
        )
        remote = {}
    grouped = [n for n in remote if plan.nodes[n].spec.group or (tuned or {}).get(n, {}).get("group")]
    if grouped:  # taken out of its group, a node between two of the group's members would make a circle
        warnings.append(
            f"{', '.join(grouped)}: in a group, so run in this graph's own deployment, not shared with other graphs"
        )
        remote = {n: r for n, r in remote.items() if n not in grouped}
    settings = planner.node_settings(plan, tuned, shared=frozenset(remote))
    costs = {n: (measured or {}).get(n) or planner.declared_cost(node) for n, node in plan.nodes.items()}
    placements = planner.place(plan, settings, costs, fuse)
    members = {p.name: list(p.nodes) for p in placements}
    order = _unit_order(plan, members)
    unit_of = {node_id: name for name, ids in members.items() for node_id in ids}
    memory = gpu_memory_gib or DEFAULT_GPU_MEMORY_GIB
    fractions = {
        name: [_fraction(plan.nodes[n], settings[n], weight_bytes, memory, warnings) for n in ids]
        for name, ids in members.items()
    }
    gpus = {name: sum(f for f, _ in parts) for name, parts in fractions.items()}
    by_name = {p.name: p for p in placements}
    weights = {name: _unit_weights(plan, ids, weight_bytes) for name, ids in members.items()}
    sizing = planner.size_units(
        plan,
        [by_name[name] for name in order],
        settings,
        costs,
        machine,
        batching=batching,
        on_gpu={name: gpus[name] > 0 for name in order},
        weights=weights,
        elsewhere=frozenset(name for name, ids in members.items() if ids[0] in remote),
    )
    for p in placements:
        _check_replicas(plan, p, settings, warnings)
    units = []
    for name in order:
        ids, size = members[name], sizing[name]
        nodes = [plan.nodes[i] for i in ids]
        units.append(
            Unit(
                name=name,
                nodes=tuple(ids),
                graph_inputs=tuple(dict.fromkeys(s.port for n in nodes for s in n.inputs.values() if s.node is None)),
                upstream=tuple(
                    u
                    for u in order
                    if u != name
                    and any(s.node is not None and unit_of[s.node] == u for n in nodes for s in n.inputs.values())
                ),
                exports=_exports(plan, ids, unit_of),
                num_gpus=round(gpus[name], 4) if gpus[name] <= 1 else float(math.ceil(gpus[name])),
                num_cpus=size.num_cpus,
                threads=size.threads,
                replicas=size.replicas,
                max_batch_size=size.max_batch_size,
                batch_wait_s=size.batch_wait_s,
                max_ongoing_requests=size.max_ongoing_requests,
                chunks=tuple(size.chunks.items()),
                gpu_note="; ".join(note for _, note in fractions[name] if note),
                why=size.why
                + _autoscale_why(name, size.replicas, size.max_batch_size, size.max_ongoing_requests, warnings),
            )
        )
    units = [_remote(u, remote[u.nodes[0]]) if u.nodes[0] in remote else u for u in units]
    read = {u for unit in units for u in unit.upstream}
    giving = {unit_of[s.node] for s in plan.outputs.values() if s.node is not None}
    awaited = tuple(u.name for u in units if u.name not in read or u.name in giving)
    return Compiled(plan, tuple(units), awaited, tuple(warnings))


def _remote(unit: Unit, remote: Remote) -> Unit:
    """A unit another application runs: no resources or replicas of this application's."""
    return replace(
        unit,
        remote=remote,
        num_gpus=0.0,
        num_cpus=0.0,
        replicas=0,
        gpu_note="",
        why=(f"runs in application '{remote.app}' (deployment '{remote.deployment}'), shared with other graphs",),
    )


def gpu_fraction(weight_bytes: int, gpu_memory_gib: float) -> float:
    """The documented rule: room for the weights twice over plus 1 GiB, in steps of 0.05."""
    need = (2 * weight_bytes + GIB) / (gpu_memory_gib * GIB)
    return min(1.0, max(0.05, math.ceil(need * 20 - 1e-9) / 20))


def _fraction(
    node: PlannedNode,
    settings: NodeSettings,
    weight_bytes: Callable[[PlannedNode], int | None] | None,
    memory_gib: float,
    warnings: list[str],
) -> tuple[float, str]:
    asked = settings.gpu
    if asked is not None:
        where = "as written" if settings.source.get("gpu") == "graph" else "as tuned"
        return asked, f"{node.id}: {asked:g} GPU {where}" if asked else ""
    if not node.family.uses_gpu:
        return 0.0, ""
    size = weight_bytes(node) if weight_bytes else None
    if size is None:
        warnings.append(
            f"node '{node.id}': weight files not found on this machine; asking for {UNKNOWN_FRACTION:g} GPU. "
            f"Set 'resources: {{gpu: ...}}' on the node to choose."
        )
        return UNKNOWN_FRACTION, f"{node.id}: {UNKNOWN_FRACTION:g} GPU (weights unknown)"
    fraction = gpu_fraction(size, memory_gib)
    return fraction, f"{node.id}: {fraction:g} GPU for {size / GIB:.2f} GiB of weights on a {memory_gib:g} GiB GPU"


def _memo(weight_bytes: Callable[[PlannedNode], int | None]) -> Callable[[PlannedNode], int | None]:
    """Weight files are counted once per node (it may walk a model cache)."""
    seen: dict[str, int | None] = {}

    def counted(node: PlannedNode) -> int | None:
        if node.id not in seen:
            seen[node.id] = weight_bytes(node)
        return seen[node.id]

    return counted


def _unit_weights(
    plan: Plan, ids: Sequence[str], weight_bytes: Callable[[PlannedNode], int | None] | None
) -> int | None:
    """Bytes of a unit's weight files, None where any model node's are unknown."""
    total = 0
    for node_id in ids:
        node = plan.nodes[node_id]
        if not node.family.uses_gpu:
            continue
        size = weight_bytes(node) if weight_bytes else None
        if size is None:
            return None
        total += size
    return total


def _autoscale_why(
    name: str, replicas: int | Autoscale, batch: int, ongoing: int, warnings: list[str]
) -> tuple[str, ...]:
    if not isinstance(replicas, Autoscale):
        return ()
    target = replicas.target_ongoing_requests or AUTOSCALE_BATCHES * batch
    if target > ongoing:
        warnings.append(
            f"deployment '{name}': target_ongoing_requests {target:g} is more than a replica may hold "
            f"(max_ongoing_requests {ongoing}): it would never scale out. Lower it or raise the batch size."
        )
    written = (
        "as written"
        if replicas.target_ongoing_requests
        else f"{AUTOSCALE_BATCHES} batches of {batch}: one running, one filling"
    )
    return (
        f"autoscaling {replicas.min}..{replicas.max} replicas at {target:g} frames a replica ({written}), "
        f"up after {replicas.upscale_delay_s:g} s, down after {replicas.downscale_delay_s:g} s",
    )


def _check_replicas(
    plan: Plan, placement: planner.Placement, settings: Mapping[str, NodeSettings], warnings: list[str]
) -> None:
    asked = [settings[n].replicas or 1 for n in placement.nodes]
    if len(set(map(repr, asked))) > 1:
        warnings.append(
            f"deployment '{placement.name}': its nodes ask for different replicas ({', '.join(map(str, asked))}); "
            "using the largest."
        )


def _unit_order(plan: Plan, members: Mapping[str, list[str]]) -> list[str]:
    unit_of = {node_id: name for name, ids in members.items() for node_id in ids}
    graph = nx.DiGraph()
    graph.add_nodes_from(members)
    for node_id, node in plan.nodes.items():
        for src in node.inputs.values():
            if src.node is not None and unit_of[src.node] != unit_of[node_id]:
                graph.add_edge(unit_of[src.node], unit_of[node_id])
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        first = {name: min(list(plan.nodes).index(i) for i in ids) for name, ids in members.items()}
        return list(nx.lexicographical_topological_sort(graph, key=first.__getitem__))
    path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
    grouped = sorted({g for g, _ in cycle if len(members[g]) > 1})
    node = members[grouped[0]][0] if grouped else None
    raise GraphInvalid(
        [
            GraphError(
                "group_cycle",
                f"groups make deployments depend on each other in a circle: {path}.",
                plan.file,
                node=node,
                hint=f"A group must not have a node outside it both after one of its members and before another; "
                f"move that node into group '{grouped[0] if grouped else '?'}' or split the group.",
            )
        ]
    )


def _exports(plan: Plan, ids: Sequence[str], unit_of: Mapping[str, str]) -> tuple[Source, ...]:
    mine, unit = set(ids), unit_of[ids[0]]
    wanted = [s for n in plan.nodes.values() if unit_of[n.id] != unit for s in n.inputs.values()]
    wanted += list(plan.outputs.values())
    return tuple(dict.fromkeys(s for s in wanted if s.node in mine))
