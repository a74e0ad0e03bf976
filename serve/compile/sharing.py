"""Several graphs on one cluster, one copy of each model.

Nodes of served-together graphs that load the same weights run once, in an application
of their own, and each graph's ingress calls it (`Alias` maps a caller's frame onto the
shared node). docs/cluster.md has when nodes count as the same and how frames travel.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capgraph.engine.plan import Plan, PlannedNode, Source
from capgraph.engine.types import PortType

MODEL_APP_PREFIX = "capgraph-model-"


@dataclass(frozen=True)
class SharedModel:
    """One model served once for several graphs."""

    key: str
    """`<family>-<hash of the params that decide its weights>` (`share_key`)."""
    app: str
    """The Serve application that runs it."""
    graph: dict[str, Any]
    """A one-node graph of it (its ports as the graph's inputs and outputs), from the
    graphs that use it (`_one_node_graph`): what its application is built from."""
    users: tuple[tuple[str, str], ...]
    """(capability, node id) of every node it serves."""

    @property
    def deployment(self) -> str:
        return next(iter(self.graph["nodes"]))


@dataclass(frozen=True)
class Alias:
    """How a caller graph's frame maps onto a shared model's one-node graph."""

    node: str
    """The caller's node id: outputs go back as `<node>.<port>`, timings under it."""
    inputs: tuple[tuple[str, str], ...]
    """(the shared graph's input = its node's port, the caller's value key: a graph input
    name or `node.port`)."""


def share_key(node: PlannedNode) -> str | None:
    """What identifies the weights a node loads; None for a weightless family (nothing to share).
    The params of the family's `shared_weights`, else every load-time param and the wired ports."""
    family = node.family
    if not family.weights:
        return None
    if family.shared_weights is None:
        load_time = node.params.model_dump(mode="json", exclude=set(family.request_params))
        identity = {"type": family.type, "params": load_time, "wired": sorted(node.inputs)}
    else:  # each frame runs with its caller's other params and wiring
        identity = {
            "type": family.type,
            "params": node.params.model_dump(mode="json", include=set(family.shared_weights)),
        }
    if node.clip:  # over a clip its port takes Videos: it serves only callers that send clips
        identity["clip"] = sorted(node.clip)
    text = json.dumps(identity, sort_keys=True)
    return (
        f"{family.type.replace('_', '-')}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"  # a capability name's letters
    )


def find_shared(plans: Sequence[Plan]) -> dict[str, SharedModel]:
    """The models that nodes of two or more of `plans` load alike, by key. A node in a
    `group` is not shared: its author put it in that deployment; nor are nodes that no one
    node can serve together (the family's `for_callers` refuses: each keeps its own copy)."""
    users: dict[str, list[tuple[Plan, str]]] = {}
    for plan in plans:
        for node_id, node in plan.nodes.items():
            key = share_key(node)
            if key is not None and node.spec.group is None:  # a grouped node stays with its group
                users.setdefault(key, []).append((plan, node_id))
    shared = {}
    for key, found in users.items():
        if len({plan.capability for plan, _ in found}) < 2:
            continue
        try:
            graph = _one_node_graph(found, key)
        except ValueError:
            continue
        shared[key] = SharedModel(key, MODEL_APP_PREFIX + key, graph, tuple((p.capability, n) for p, n in found))
    return shared


def shared_in(plan: Plan, shared: Mapping[str, SharedModel]) -> dict[str, SharedModel]:
    """Node id -> the shared model it uses, for `plan`'s nodes."""
    found = {}
    for node_id, node in plan.nodes.items():
        key = share_key(node)
        if key in shared:
            found[node_id] = shared[key]
    return found


def alias(plan: Plan, node_id: str) -> Alias:
    node = plan.nodes[node_id]
    return Alias(node_id, tuple((port, str(src)) for port, src in node.inputs.items()))


def _one_node_graph(users: Sequence[tuple[Plan, str]], key: str) -> dict[str, Any]:
    """The node alone: the params and ports its family's `for_callers` gives for all its
    users (for most families, the first user's, which all share), the ports as graph inputs
    (of the types a user feeds them), every output as a graph output, the most GPU and CPU
    any user wrote, and the batch and replicas the first user wrote."""
    plan, node_id = users[0]
    node = plan.nodes[node_id]
    family = node.family
    params, ports = family.for_callers([(p.nodes[n].params, frozenset(p.nodes[n].inputs)) for p, n in users])
    fed = {port: _type_of(p, src) for p, n in reversed(users) for port, src in p.nodes[n].inputs.items()}
    spec = node.spec.model_dump(mode="json", exclude_none=True, exclude={"inputs", "group", "description"})
    spec["params"] = params.model_dump(mode="json")
    for name in ("gpu", "cpu"):  # the most any user wrote: the one node may load more than each user's (ControlNets)
        written = [getattr(p.nodes[n].spec.resources, name) for p, n in users]
        if any(w is not None for w in written):
            spec.setdefault("resources", {})[name] = max(w for w in written if w is not None)
    spec["inputs"] = {port: port for port in family.inputs if port in ports}
    name = family.type
    return {
        "capability": MODEL_APP_PREFIX + key,
        "description": f"the {family.type} model shared by several graphs",
        "inputs": {port: {"type": (fed.get(port) or family.inputs[port].types[0]).value} for port in spec["inputs"]},
        "nodes": {name: spec},
        "outputs": {port: f"{name}.{port}" for port in family.outputs},
    }


def _type_of(plan: Plan, src: Source) -> PortType:
    return plan.source_type(src)
