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
from capgraph.engine.spec import GraphSpec, NodeSpec
from capgraph.engine.types import PortType


@dataclass(frozen=True)
class Source:
    """Where a value comes from: a graph input (`node is None`) or a node's output port."""

    node: str | None
    port: str

    def __str__(self) -> str:
        return self.port if self.node is None else f"{self.node}.{self.port}"


@dataclass(frozen=True)
class PlannedNode:
    id: str
    family: type[Node]
    params: NodeParams
    inputs: dict[str, Source]
    spec: NodeSpec

    def build(self) -> Node:
        return self.family(self.params, self.id)


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

    def output_type(self, name: str) -> PortType:
        src = self.outputs[name]
        if src.node is None:
            return self.spec.inputs[src.port].type
        return self.nodes[src.node].family.outputs[src.port].type

    def read_outputs(self, node_id: str) -> frozenset[str]:
        """The output ports of `node_id` that something reads: another node's input or a
        graph output. The node need not compute the rest."""
        sources = [*(s for n in self.nodes.values() for s in n.inputs.values()), *self.outputs.values()]
        return frozenset(s.port for s in sources if s.node == node_id)

    def request_params(self) -> dict[str, tuple[str, str]]:
        """Names a request may set, mapped to (node id, param name): the graph's own names
        (its `params:` section) first, then every `node.param` its families allow."""
        aliases = {name: _split(target) for name, target in self.spec.params.items()}
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
        changes: dict[str, dict[str, Any]] = {}
        sent_as: dict[tuple[str, str], str] = {}
        for key, value in overrides.items():
            if key not in allowed:
                raise InputError(f"params.{key}", _not_settable(key, allowed, self.nodes))
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
