"""From a validated Plan to deployment units: which nodes run in which Ray Serve
deployment, with what resources, batching and replicas. Pure data, no Ray import, so the
compiled shape can be inspected and tested without starting a cluster.

A *unit* is one deployment. By default every node is its own unit; nodes that share a
`group` are fused into one unit (one actor: no handle hop, no object-store copy between
them); `fuse="all"` fuses the whole graph, `fuse="none"` ignores groups.

How a unit's GPU fraction is chosen (the rule the README documents):

1. `resources.gpu` set on the node: used as written (0 keeps the node on the CPU).
2. unset, and the family runs no model (`uses_gpu = False`): 0.
3. unset, for a model family: `(2 x weight bytes + 1 GiB) / GPU memory`, rounded up to a
   multiple of 0.05 and kept within [0.05, 1]. Weight bytes are the node's weight files
   as found on this machine (the bytes `load` will put on the device, counted before
   loading); twice over leaves room for activations, plus 1 GiB for the CUDA context and
   workspace. Where the files are not on this machine the fraction is 0.25, with a warning.
   GPU memory comes from `gpu_memory_gib`, else the GPU this process sees, else Ray's
   `accelerator_type`, else 24 GiB.

A fused unit asks for the sum of its nodes' fractions (rounded up to whole GPUs past 1,
as Ray requires) and the largest of their CPU asks.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import networkx as nx

from engine.errors import GraphError, GraphInvalid
from engine.plan import Plan, PlannedNode, Source
from engine.spec import Autoscale

GIB = 1 << 30
DEFAULT_NODE_CPUS = 0.25
"""Ray's default of 1 CPU per replica leaves a 2-core laptop able to start only two."""
UNKNOWN_FRACTION = 0.25
DEFAULT_GPU_MEMORY_GIB = 24.0
INGRESS = "capgraph-ingress"
"""Name of the HTTP deployment; a hyphen keeps it apart from node ids and groups."""

Fuse = Literal["groups", "all", "none"]


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
    replicas: int | Autoscale = 1
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    gpu_note: str = ""
    """How `num_gpus` was chosen, for logs and `capgraph serve --dry-run`."""

    @property
    def max_ongoing_requests(self) -> int:
        """Twice the batch size: one batch runs while the next one fills. Ray's default
        of 5 would cap every batch at 5 frames."""
        return max(2 * self.max_batch_size, 4)

    @property
    def min_replicas(self) -> int:
        return self.replicas.min if isinstance(self.replicas, Autoscale) else self.replicas

    def deployment_options(self) -> dict:
        """Keyword arguments for `Deployment.options`."""
        options: dict = {
            "name": self.name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if isinstance(self.replicas, Autoscale):
            options["autoscaling_config"] = {
                "min_replicas": self.replicas.min,
                "max_replicas": self.replicas.max,
                "target_ongoing_requests": self.replicas.target_ongoing_requests,
            }
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
    fuse: Fuse = "groups",
    batching: bool = True,
    weight_bytes: Callable[[PlannedNode], int | None] | None = None,
    gpu_memory_gib: float | None = None,
) -> Compiled:
    """Group the plan's nodes into units and give each one its resources and batching.

    `weight_bytes(node)` estimates a model node's weights before loading (None: unknown);
    it is only called for model nodes without `resources.gpu`. Raises GraphInvalid when
    groups would make the units depend on each other in a circle.
    """
    members = _group(plan, fuse)
    order = _unit_order(plan, members)
    unit_of = {node_id: name for name, ids in members.items() for node_id in ids}
    warnings: list[str] = []
    memory = gpu_memory_gib or DEFAULT_GPU_MEMORY_GIB
    units = []
    for name in order:
        ids = members[name]
        nodes = [plan.nodes[i] for i in ids]
        fractions = [_fraction(n, weight_bytes, memory, warnings) for n in nodes]
        gpus = sum(f for f, _ in fractions)
        units.append(
            Unit(
                name=name,
                nodes=tuple(ids),
                graph_inputs=tuple(dict.fromkeys(s.port for n in nodes for s in n.inputs.values() if s.node is None)),
                upstream=tuple(u for u in order if u != name and any(
                    s.node is not None and unit_of[s.node] == u for n in nodes for s in n.inputs.values())),
                exports=_exports(plan, ids, unit_of),
                num_gpus=round(gpus, 4) if gpus <= 1 else float(math.ceil(gpus)),
                num_cpus=max((n.spec.resources.cpu or DEFAULT_NODE_CPUS) for n in nodes),
                replicas=_replicas(nodes, name, warnings),
                max_batch_size=min(_batch(n)[0] for n in nodes) if batching else 1,
                batch_wait_s=max(_batch(n)[1] for n in nodes) if batching else 0.0,
                gpu_note="; ".join(note for _, note in fractions if note),
            )
        )
    read = {u for unit in units for u in unit.upstream}
    giving = {unit_of[s.node] for s in plan.outputs.values() if s.node is not None}
    awaited = tuple(u.name for u in units if u.name not in read or u.name in giving)
    return Compiled(plan, tuple(units), awaited, tuple(warnings))


def gpu_fraction(weight_bytes: int, gpu_memory_gib: float) -> float:
    """The documented rule: room for the weights twice over plus 1 GiB, in steps of 0.05."""
    need = (2 * weight_bytes + GIB) / (gpu_memory_gib * GIB)
    return min(1.0, max(0.05, math.ceil(need * 20 - 1e-9) / 20))


def _fraction(node: PlannedNode, weight_bytes: Callable[[PlannedNode], int | None] | None,
              memory_gib: float, warnings: list[str]) -> tuple[float, str]:
    asked = node.spec.resources.gpu
    if asked is not None:
        return asked, f"{node.id}: {asked:g} GPU as written" if asked else ""
    if not node.family.uses_gpu:
        return 0.0, ""
    size = weight_bytes(node) if weight_bytes else None
    if size is None:
        warnings.append(f"node '{node.id}': weight files not found on this machine; asking for {UNKNOWN_FRACTION:g} GPU. "
                        f"Set 'resources: {{gpu: ...}}' on the node to choose.")
        return UNKNOWN_FRACTION, f"{node.id}: {UNKNOWN_FRACTION:g} GPU (weights unknown)"
    fraction = gpu_fraction(size, memory_gib)
    return fraction, f"{node.id}: {fraction:g} GPU for {size / GIB:.2f} GiB of weights on a {memory_gib:g} GiB GPU"


def _batch(node: PlannedNode) -> tuple[int, float]:
    batch = node.spec.batch
    if batch is None:
        return node.family.max_batch, 0.01
    return batch.max_size, batch.wait_ms / 1000.0


def _replicas(nodes: Sequence[PlannedNode], unit: str, warnings: list[str]) -> int | Autoscale:
    asked = [n.spec.replicas for n in nodes]
    scaling = [r for r in asked if isinstance(r, Autoscale)]
    if len(set(map(repr, asked))) > 1:
        warnings.append(f"deployment '{unit}': its nodes ask for different replicas ({', '.join(map(str, asked))}); "
                        "using the largest.")
    if scaling:
        return max(scaling, key=lambda a: (a.max, a.min))
    return max(r for r in asked if isinstance(r, int))


def _group(plan: Plan, fuse: Fuse) -> dict[str, list[str]]:
    """Unit name -> node ids, in plan (topological) order."""
    if fuse == "all":
        return {plan.capability.replace("-", "_"): list(plan.nodes)}
    members: dict[str, list[str]] = {}
    for node_id, node in plan.nodes.items():
        group = node.spec.group if fuse == "groups" else None
        if group is None:
            members.setdefault(node_id, []).append(node_id)
        else:
            name = group if group not in plan.nodes or plan.nodes[group].spec.group == group else f"{group}_group"
            members.setdefault(name, []).append(node_id)
    return members


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
    raise GraphInvalid([GraphError(
        "group_cycle", f"groups make deployments depend on each other in a circle: {path}.", plan.file, node=node,
        hint=f"A group must not have a node outside it both after one of its members and before another; "
             f"move that node into group '{grouped[0] if grouped else '?'}' or split the group.")])


def _exports(plan: Plan, ids: Sequence[str], unit_of: Mapping[str, str]) -> tuple[Source, ...]:
    mine, unit = set(ids), unit_of[ids[0]]
    wanted = [s for n in plan.nodes.values() if unit_of[n.id] != unit for s in n.inputs.values()]
    wanted += list(plan.outputs.values())
    return tuple(dict.fromkeys(s for s in wanted if s.node in mine))
