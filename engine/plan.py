"""The immutable result of validation: what the executor and the Serve compiler consume.

A `Plan` is only ever built by `engine.validate`, so holding one means the graph is valid:
every family exists, every param checked, every wire resolved and type-checked, the nodes
in topological order. Consumers never re-validate.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from pydantic import ValidationError

from capgraph.engine.errors import GraphError, InputError, did_you_mean
from capgraph.engine.node import Node, NodeParams
from capgraph.engine.spec import GraphSpec, NodeSpec, OutputSpec, SwitchSpec
from capgraph.engine.types import FRAME_TYPES, PortType


@dataclass(frozen=True)
class Source:
    """Where a value comes from: a graph input (`node is None`) or a node's output port."""

    node: str | None
    port: str

    def __str__(self) -> str:
        return self.port if self.node is None else f"{self.node}.{self.port}"


SWITCHES = "*switches"
"""The key under which `Plan.params_for` passes a request's switch values on, beside the
node ids (a node id is an identifier, so never this)."""


class Switches(NodeParams):
    """A request's switch values (the graph-level Bool params that `when:` reads)."""

    values: dict[str, bool]


@dataclass(frozen=True)
class Condition:
    """A node's `when:`: the Bool graph input or switch `name` is true (false if `negate`)."""

    name: str
    negate: bool = False

    def holds(self, values: Mapping[str, bool]) -> bool:
        return bool(values[self.name]) != self.negate

    def __str__(self) -> str:
        return f"not {self.name}" if self.negate else self.name


@dataclass(frozen=True)
class PlannedNode:
    id: str
    family: type[Node]
    params: NodeParams
    inputs: dict[str, Source]
    spec: NodeSpec
    when: Condition | None = None
    clip: frozenset[str] = frozenset()
    """Image ports wired to a Video: the node runs over the clip's frames (in batches) and
    its per-frame outputs are Videos (docs/graph-format.md "Video")."""

    def build(self) -> Node:
        return self.family(self.params, self.id)

    def output_type(self, port: str) -> PortType:
        """What output `port` gives: a Video for a per-frame output of a node over a clip."""
        kind = self.family.outputs[port].type
        return PortType.VIDEO if self.clip and kind in FRAME_TYPES else kind

    @property
    def max_frames(self) -> int:
        """Most frames of a clip one `run_batch` call takes: the graph's `batch.max_size`, else the family's."""
        return self.spec.batch.max_size if self.spec.batch is not None else self.family.max_batch


@dataclass(frozen=True)
class Plan:
    spec: GraphSpec
    file: str
    nodes: dict[str, PlannedNode]
    """In topological order: every node comes after the nodes it reads from."""
    outputs: dict[str, Source]
    graph: nx.DiGraph = field(repr=False, compare=False)
    warnings: tuple[GraphError, ...] = ()

    @property
    def capability(self) -> str:
        return self.spec.capability

    @property
    def optional_outputs(self) -> frozenset[str]:
        """Outputs a branch may leave without a value (`{from: ..., optional: true}`)."""
        return frozenset(n for n, o in self.spec.outputs.items() if isinstance(o, OutputSpec) and o.optional)

    def output_type(self, name: str) -> PortType:
        return self.source_type(self.outputs[name])

    def source_type(self, src: Source) -> PortType:
        """The type of the value a wire carries: a graph input's, or a node output's (a Video
        for a per-frame output of a node over a clip)."""
        if src.node is None:
            return self.spec.inputs[src.port].type
        return self.nodes[src.node].output_type(src.port)

    def read_outputs(self, node_id: str) -> frozenset[str]:
        """The output ports of `node_id` that something reads: another node's input or a
        graph output. The node need not compute the rest."""
        sources = [*(s for n in self.nodes.values() for s in n.inputs.values()), *self.outputs.values()]
        return frozenset(s.port for s in sources if s.node == node_id)

    # -- branches ------------------------------------------------------------------------

    @property
    def switches(self) -> dict[str, SwitchSpec]:
        """The graph-level Bool params that only turn nodes on or off (`when:`), by name."""
        return {name: s for name, s in self.spec.params.items() if isinstance(s, SwitchSpec)}

    @property
    def conditions(self) -> tuple[str, ...]:
        """The Bool graph inputs and switches some node's `when:` reads, in plan order."""
        return tuple(dict.fromkeys(n.when.name for n in self.nodes.values() if n.when is not None))

    def condition_values(self, frame: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> dict[str, bool]:
        """Each condition's value for a frame: a Bool graph input from the (checked) frame, a
        switch from the request's resolved params (`params[SWITCHES]`) or its default."""
        asked = params.get(SWITCHES) if params else None
        values = asked.values if isinstance(asked, Switches) else {}
        switches = self.switches
        return {
            name: values.get(name, switches[name].default) if name in switches else bool(frame[name])
            for name in self.conditions
        }

    def active(self, values: Mapping[str, bool]) -> frozenset[str]:
        """The nodes that run for these condition values; the others are skipped.

        A node runs when its `when:` holds, every required input port has a value and, if it
        reads other nodes, at least one of its inputs has one (an optional port whose source
        is skipped is left out). Then, from the outputs back, a node whose results no running
        node and no graph output reads is skipped too: nothing would use them."""
        if not self.conditions:
            return frozenset(self.nodes)
        running: set[str] = set()
        for node_id, node in self.nodes.items():  # topological order
            if node.when is not None and not node.when.holds(values):
                continue
            present = {port: src.node is None or src.node in running for port, src in node.inputs.items()}
            required = all(ok for port, ok in present.items() if not node.family.inputs[port].optional)
            if required and (any(present.values()) or not present):
                running.add(node_id)
        needed = {s.node for s in self.outputs.values() if s.node in running}
        for node_id in reversed(self.nodes):
            if node_id in needed:
                needed |= {s.node for s in self.nodes[node_id].inputs.values() if s.node in running}
        return frozenset(n for n in self.nodes if n in needed)

    def skipped(self, frame: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The nodes skipped for this frame and request, in plan order (none without conditions)."""
        if not self.conditions:
            return ()
        active = self.active(self.condition_values(frame, params))
        return tuple(n for n in self.nodes if n not in active)

    def request_params(self) -> dict[str, tuple[str, str]]:
        """Names a request may set, mapped to (node id, param name): the graph's own names
        (its `params:` section) first, then every `node.param` its families allow. Switches
        (`switches`) set no node param and are not listed."""
        aliases = {name: _split(target) for name, target in self.spec.params.items() if isinstance(target, str)}
        return aliases | {
            f"{node.id}.{name}": (node.id, name)
            for node in self.nodes.values()
            for name in sorted(node.family.request_params)
        }

    def params_for(self, overrides: Mapping[str, Any] | None) -> dict[str, NodeParams]:
        """Each node's params with a request's overrides applied, by the graph's own names
        (`{"seed": 7}`) or as `{"node.param": value}`.

        Raises InputError naming the param as the request sent it for anything the graph
        does not let a request set (a model id, a device, an unknown name), a param set
        twice under two names, or a value out of bounds.
        """
        params = {node_id: node.params for node_id, node in self.nodes.items()}
        if not overrides:
            return params
        allowed = self.request_params()
        switches = self.switches
        changes: dict[str, dict[str, Any]] = {}
        sent_as: dict[tuple[str, str], str] = {}
        turned: dict[str, bool] = {}
        for key, value in overrides.items():
            if key in switches:
                if not isinstance(value, bool):
                    raise InputError(f"params.{key}", f"a switch: expected true or false, got {value!r:.40}")
                turned[key] = value
                continue
            if key not in allowed:
                raise InputError(f"params.{key}", _not_settable(key, {**allowed, **switches}, self.nodes))
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"params.{key}", "must be a finite number")
            node_id, name = allowed[key]
            if (node_id, name) in sent_as:
                raise InputError(
                    f"params.{key}",
                    f"sets {node_id}.{name}, which this request already sets as "
                    f"'{sent_as[node_id, name]}'; send one of them",
                )
            sent_as[node_id, name] = key
            changes.setdefault(node_id, {})[name] = value
        for node_id, values in changes.items():
            base = self.nodes[node_id].params
            try:
                params[node_id] = type(base).model_validate({**base.model_dump(), **values})
            except ValidationError as exc:
                first = exc.errors()[0]
                # a cross-field rule has no location: name the request's param its message is about
                loc = [str(p) for p in first["loc"]] or [n for n in values if n in first["msg"]][:1]
                key = sent_as.get((node_id, loc[0])) if loc else None
                field = f"params.{key}" if key else ".".join(["params", node_id, *loc])
                raise InputError(field, first["msg"]) from None
        if turned:
            params[SWITCHES] = Switches(values=turned)
        return params


def _split(target: str) -> tuple[str, str]:
    node_id, _, name = target.partition(".")
    return node_id, name


def _not_settable(key: str, allowed: Mapping[str, Any], nodes: Mapping[str, PlannedNode]) -> str:
    node_id, _, name = key.partition(".")
    node = nodes.get(node_id)
    if node is not None and name in node.family.Params.model_fields:
        return f"'{name}' of node '{node_id}' is fixed by the graph and cannot be set by a request. " + did_you_mean(
            key, allowed, allowed_label="Settable"
        )
    return "unknown param. " + did_you_mean(key, allowed, allowed_label="Settable")
