"""Several graphs on one cluster, one copy of each model.

Two nodes load the same weights when they are of the same family with the same load-time
params (every param but the family's `request_params`, which a request may change) and
the same optional inputs wired. Where graphs served together hold such nodes, the model
runs once, in an application of its own (`capgraph-model-<family>-<hash>`, no HTTP route:
`serve.app.build_model`), and the ingress of each graph calls that deployment instead of
deploying its own copy. The weights then sit in GPU memory once, pre-flight counts them
once, and the model's replicas batch the frames of every graph together.

What a caller graph sends the shared deployment is its own frame under its own names; an
`Alias` tells the shared replica which of the caller's values feed which of its ports, the
caller's params for the node (request params may differ between graphs), and the caller's
node id to give its outputs back under.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capgraph.engine.node import NodeParams
from capgraph.engine.plan import Plan, PlannedNode, Source
from capgraph.engine.types import PortType

MODEL_APP_PREFIX = "capgraph-model-"


@dataclass(frozen=True)
class SharedModel:
    """One model served once for several graphs."""

    key: str
    """`<family>-<hash of the load-time params and wired ports>`."""
    app: str
    """The Serve application that runs it."""
    graph: dict[str, Any]
    """A one-node graph of it (its ports as the graph's inputs and outputs), from the
    first graph that uses it: what its application is built from."""
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
    params: NodeParams
    """The caller's params for the node, where a request does not override them."""


def share_key(node: PlannedNode) -> str | None:
    """What identifies the weights a node loads; None for a weightless family (nothing to share)."""
    family = node.family
    if not family.weights:
        return None
    load_time = node.params.model_dump(mode="json", exclude=set(family.request_params))
    text = json.dumps({"type": family.type, "params": load_time, "wired": sorted(node.inputs)}, sort_keys=True)
    return f"{family.type.replace('_', '-')}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"  # a capability name's letters


def find_shared(plans: Sequence[Plan]) -> dict[str, SharedModel]:
    """The models that nodes of two or more of `plans` load alike, by key. A node in a
    `group` is not shared: its author put it in that deployment."""
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
        plan, node_id = found[0]
        shared[key] = SharedModel(key, MODEL_APP_PREFIX + key, _one_node_graph(plan, node_id, key),
                                  tuple((p.capability, n) for p, n in found))
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
    return Alias(node_id, tuple((port, str(src)) for port, src in node.inputs.items()), node.params)


def _one_node_graph(plan: Plan, node_id: str, key: str) -> dict[str, Any]:
    """The node alone: its wired ports as graph inputs (of the types `plan` feeds them),
    every output as a graph output, its params, resources, batch and replicas as `plan`
    wrote them."""
    node = plan.nodes[node_id]
    family = node.family
    spec = node.spec.model_dump(mode="json", exclude_none=True, exclude={"inputs", "group", "description"})
    spec["params"] = node.params.model_dump(mode="json")
    spec["inputs"] = {port: port for port in node.inputs}
    name = family.type
    return {
        "capability": MODEL_APP_PREFIX + key,
        "description": f"the {family.type} model shared by several graphs",
        "inputs": {port: {"type": _type_of(plan, src).value} for port, src in node.inputs.items()},
        "nodes": {name: spec},
        "outputs": {port: f"{name}.{port}" for port in family.outputs},
    }


def _type_of(plan: Plan, src: Source) -> PortType:
    if src.node is None:
        return plan.spec.inputs[src.port].type
    return plan.nodes[src.node].family.outputs[src.port].types[0]
