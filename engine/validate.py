"""Turn a graph file into a `Plan`, or report every problem in it at once.

Three small steps, each adding to one list of problems: *read* (YAML and the shape of each
section, with pydantic), *resolve* (families, params, wires and port types), *check the
graph* (cycles and dead ends, with networkx). Only a graph with no errors becomes a Plan.
"""

import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import BaseModel, ValidationError

from capgraph.engine.errors import GraphError, GraphInvalid, did_you_mean
from capgraph.engine.mounts import section_names
from capgraph.engine.plan import Condition, Plan, PlannedNode, Source
from capgraph.engine.registry import broken, catalogue, unmet
from capgraph.engine.spec import (
    GRAPH_KEYS,
    IDENT,
    RAY_KEYS,
    GraphSpec,
    InputSpec,
    NodeSpec,
    OutputSpec,
    SwitchSpec,
    output_ref,
    parse_reference,
)
from capgraph.engine.types import FRAME_TYPES, PortType, check_value, compatible, over_clip
from capgraph.engine.yamlload import LocatedDict, YamlProblem, load_yaml, locate

_IDENT = re.compile(IDENT)
_DEFAULTABLE = {PortType.TEXT, PortType.NUMBER, PortType.INTEGER, PortType.BOOL, PortType.POINTS, PortType.BOXES}
MAX_CONDITIONS = 12
"""Conditions a graph may branch on: every combination (2 ** 12) is checked at validation."""


def load_plan(path: str | Path) -> Plan:
    """Read and validate a graph file. Raises GraphInvalid listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GraphInvalid([GraphError("file", f"cannot read graph file: {exc}", file=str(path))]) from None
    return plan_from_text(text, str(path))


def plan_from_text(text: str, file: str = "<graph>") -> Plan:
    try:
        tree = load_yaml(text)
    except YamlProblem as exc:
        raise GraphInvalid([GraphError("yaml", exc.message, file, exc.line, exc.column)]) from None
    return plan_from_data(tree, file)


def plan_from_data(tree: Any, file: str = "<graph>") -> Plan:
    """Validate an already-parsed graph (e.g. a Serve builder's args). Located trees from
    `load_yaml` give line numbers; plain dicts give paths only."""
    return _Validator(tree, file).plan()


class _Validator:
    def __init__(self, tree: Any, file: str):
        self.tree, self.file = tree, file
        self.problems: list[GraphError] = []
        self.broken: set[str] = set()
        """Inputs and nodes already reported as invalid: wires to them are not reported again."""
        self.clips: dict[str, frozenset[str]] = {}
        """Nodes' ports that run them over a clip (`over_clip`), worked out on first need."""

    # -- reporting -----------------------------------------------------------------------

    def report(self, code: str, message: str, path: tuple[Any, ...] = (), **extra: Any) -> None:
        line, column = locate(self.tree, path) or (None, None)
        self.problems.append(GraphError(code, message, self.file, line, column, **extra))

    def report_pydantic(
        self, exc: ValidationError, prefix: tuple[Any, ...], model: type[BaseModel], **extra: Any
    ) -> None:
        for err in exc.errors():
            loc = prefix + tuple(err["loc"])
            field = ".".join(str(p) for p in err["loc"])
            owner = f"node '{extra['node']}': " if extra.get("node") else ""
            if err["type"] == "extra_forbidden":
                known = _fields_at(model, err["loc"][:-1])
                self.report(
                    "unknown_field",
                    f"{owner}unknown field '{field}'.",
                    loc,
                    hint=did_you_mean(str(err["loc"][-1]), known),
                    **extra,
                )
            elif err["type"] == "missing":
                self.report("missing_field", f"{owner}missing required field '{field}'.", loc[:-1], **extra)
            else:
                found = _short(err.get("input"))
                self.report("bad_value", f"{owner}{field}: {err['msg']} (found {found}).", loc, **extra)

    # -- the three steps -----------------------------------------------------------------

    def plan(self) -> Plan:
        spec = self.read()
        nodes, outputs, graph = ({}, {}, nx.DiGraph()) if spec is None else self.resolve(spec)
        order = self.check_graph(spec, nodes, outputs, graph) if spec is not None else []
        if any(p.severity == "error" for p in self.problems) or spec is None:
            raise GraphInvalid(self.problems)
        plan = Plan(
            spec=spec,
            file=self.file,
            nodes={node_id: nodes[node_id] for node_id in order},
            outputs=outputs,
            graph=graph,
        )
        self.check_branches(plan)
        if any(p.severity == "error" for p in self.problems):
            raise GraphInvalid(self.problems)
        return replace(plan, warnings=tuple(self.problems))

    def read(self) -> GraphSpec | None:
        tree = self.tree
        if not isinstance(tree, Mapping):
            self.report(
                "not_a_graph", "a graph file must be a YAML mapping with capability, inputs, nodes and outputs."
            )
            return None
        for key, pos, first in _duplicates(tree):
            self.problems.append(
                GraphError("duplicate", f"duplicate key '{key}' (first defined at line {first}).", self.file, *pos)
            )
        for key in tree:
            if key not in GRAPH_KEYS and key not in RAY_KEYS and key not in section_names():  # a mount's (Livepeer's)
                self.report(
                    "unknown_field",
                    f"unknown top-level field '{key}'.",
                    (key,),
                    hint=did_you_mean(str(key), GRAPH_KEYS),
                )
        sections: dict[str, Any] = {}
        for key in ("inputs", "nodes", "outputs"):
            value = tree.get(key, {} if key == "inputs" else None)
            if value is None or not isinstance(value, Mapping):
                if value is None:
                    self.report("missing_field", f"missing '{key}' section.", ())
                else:
                    self.report("bad_value", f"'{key}' must be a mapping of names, found {_short(value)}.", (key,))
                self.broken.add("*" + key)  # wires into a missing section would only repeat this
                value = {}
            for name in value:
                if not (isinstance(name, str) and _IDENT.match(name)):
                    self.report(
                        "bad_name",
                        f"{key[:-1]} name {name!r} must be lowercase letters, digits and '_', starting with a letter.",
                        (key, name),
                    )
            sections[key] = value
        for name in sections["inputs"].keys() & sections["nodes"].keys():
            self.report(
                "duplicate",
                f"'{name}' is both a graph input and a node id; wires could not tell them apart.",
                ("nodes", name),
                node=name,
            )

        header = {k: v for k, v in tree.items() if k in GRAPH_KEYS} | {"inputs": {}, "nodes": {}, "outputs": {}}
        try:
            GraphSpec.model_validate(header)
        except ValidationError as exc:
            self.report_pydantic(exc, (), GraphSpec)

        inputs = {}
        for name, raw in sections["inputs"].items():
            try:
                inputs[name] = spec = InputSpec.model_validate(raw)
            except ValidationError as exc:
                self.report_pydantic(exc, ("inputs", name), InputSpec)
                self.broken.add(name)
                continue
            if spec.default is not None:
                self.check_default(name, spec)
        nodes = {}
        for node_id, raw in sections["nodes"].items():
            try:
                nodes[node_id] = NodeSpec.model_validate(raw)
            except ValidationError as exc:
                self.report_pydantic(exc, ("nodes", node_id), NodeSpec, node=node_id)
                self.broken.add(node_id)
        outputs = {}
        for name, ref in sections["outputs"].items():
            if ref is None or ref == "":
                self.report(
                    "unwired_output",
                    f"output '{name}' is wired to nothing.",
                    ("outputs", name),
                    hint="Wire it to a node port, e.g. 'depth.depth_map'.",
                )
            elif isinstance(ref, Mapping):  # the long form: {from: node.port, optional: true}
                try:
                    outputs[name] = OutputSpec.model_validate(dict(ref))
                except ValidationError as exc:
                    self.report_pydantic(exc, ("outputs", name), OutputSpec)
            elif not isinstance(ref, str):
                self.report(
                    "bad_value",
                    f"output '{name}' must name a node port such as 'depth.depth_map' (or be "
                    f"{{from: node.port, optional: true}}), found {_short(ref)}.",
                    ("outputs", name),
                )
            else:
                outputs[name] = ref
        try:
            return GraphSpec.model_validate(
                {k: v for k, v in header.items() if k in GRAPH_KEYS}
                | {"inputs": inputs, "nodes": nodes, "outputs": outputs}
            )
        except ValidationError:
            return None  # already reported above, section by section

    def check_default(self, name: str, spec: InputSpec) -> None:
        where = ("inputs", name, "default")
        if spec.type not in _DEFAULTABLE:
            self.report(
                "bad_value",
                f"input '{name}' of type {spec.type.title} cannot have a default; it must come with each request.",
                where,
            )
            return
        value = (
            float(spec.default)
            if spec.type is PortType.NUMBER and isinstance(spec.default, int) and not isinstance(spec.default, bool)
            else spec.default
        )
        problem = check_value(spec.type, value)
        if problem:
            self.report("bad_value", f"default of input '{name}': {problem}.", where)

    def resolve(self, spec: GraphSpec) -> tuple[dict[str, PlannedNode], dict[str, Source], nx.DiGraph]:
        families = catalogue()
        graph = nx.DiGraph()
        graph.add_nodes_from(spec.nodes)
        planned: dict[str, PlannedNode] = {}
        missing = unmet(spec.requires)
        for index, requirement in enumerate(spec.requires):
            if requirement in missing:
                self.report(
                    "requires",
                    f"this graph requires '{requirement}', which {missing[requirement]}.",
                    ("requires", index),
                    hint=f"Install it: pip install '{requirement}'.",
                )
        for node_id, node in spec.nodes.items():
            at = ("nodes", node_id)
            family = families.get(node.type)
            if family is None:
                self.report(
                    "unknown_type",
                    f"node '{node_id}': unknown node type '{node.type}'.",
                    at + ("type",),
                    node=node_id,
                    hint=_missing_family_hint(node.type, missing, families),
                )
                self.broken.add(node_id)
                continue
            try:
                params = family.Params.model_validate(node.params)
            except ValidationError as exc:
                self.report_pydantic(exc, at + ("params",), family.Params, node=node_id)
                params = None
            wires: dict[str, Source] = {}
            misnamed = False
            for port_name, ref in node.inputs.items():
                port = family.inputs.get(port_name)
                if port is None:
                    misnamed = True
                    ports = {f"{n} ({p.label})": n for n, p in family.inputs.items()}
                    self.report(
                        "unknown_port",
                        f"node '{node_id}' ({node.type}) has no input port '{port_name}'.",
                        at + ("inputs", port_name),
                        node=node_id,
                        port=port_name,
                        hint=did_you_mean(port_name, ports.values(), allowed_label=f"Inputs of {node.type}"),
                    )
                    continue
                src = self.resolve_ref(
                    ref,
                    spec,
                    families,
                    at + ("inputs", port_name),
                    f"input '{node_id}.{port_name}'",
                    node_id,
                    port_name,
                )
                if src is None:
                    continue
                src_type = self.source_type(spec, families, src)
                if src_type is None:
                    self.report_clip_output(spec, families, src, at + ("inputs", port_name), node_id, port_name)
                    continue
                if not compatible(src_type, port) and not over_clip(src_type, port):
                    self.report(
                        "type_mismatch",
                        f"cannot connect '{src}' ({src_type.title}) to '{node_id}.{port_name}' ({port.label}).",
                        at + ("inputs", port_name),
                        node=node_id,
                        port=port_name,
                        hint=self.suggest_port(src_type, spec, families, src, node_id),
                    )
                    continue
                wires[port_name] = src
                if src.node is not None:
                    line = (locate(self.tree, at + ("inputs", port_name)) or (None,))[0]
                    graph.add_edge(src.node, node_id, line=line)
            for port_name, port in family.inputs.items():
                if not port.optional and port_name not in node.inputs and not misnamed:  # a misnamed port explains it
                    self.report(
                        "missing_input",
                        f"node '{node_id}' ({node.type}): required input port '{port_name}' "
                        f"({port.label}) is not wired.",
                        at + ("inputs",) if "inputs" in _raw(self.tree, at) else at,
                        node=node_id,
                        port=port_name,
                        hint=f"Add 'inputs: {{{port_name}: <graph input or node.port>}}'.",
                    )
            if params is not None and not misnamed:
                for port_name, problem in family.check_wiring(params, frozenset(node.inputs)):
                    where = at + ("inputs", port_name) if port_name in node.inputs else at
                    self.report(
                        "wiring", f"node '{node_id}' ({node.type}): {problem}", where, node=node_id, port=port_name
                    )
            when = self.resolve_when(spec, node_id, node)
            if params is not None:
                clip = self.clip_ports(spec, families, node_id)
                planned[node_id] = PlannedNode(node_id, family, params, wires, node, when, clip)
        outputs: dict[str, Source] = {}
        for name, ref in spec.outputs.items():
            at = ("outputs", name) if isinstance(ref, str) else ("outputs", name, "from")
            src = self.resolve_ref(output_ref(ref), spec, families, at, f"output '{name}'", None, None)
            if src is not None and self.source_type(spec, families, src) is None:
                self.report_clip_output(spec, families, src, at, None, None)
            elif src is not None:
                outputs[name] = src
        if not spec.outputs and "outputs" in (self.tree or {}):
            self.report(
                "no_outputs", "the graph declares no outputs; a capability must answer something.", ("outputs",)
            )
        self.resolve_params(spec, planned)
        return planned, outputs, graph

    def source_type(self, spec: GraphSpec, families: Mapping[str, Any], src: Source) -> PortType | None:
        """The type a resolved wire carries: a Video for a per-frame output of a node over a
        clip, None for an output that has no clip form (a Text, say, of each frame)."""
        if src.node is None:
            return spec.inputs[src.port].type
        kind = families[spec.nodes[src.node].type].outputs[src.port].type
        if not self.clip_ports(spec, families, src.node):
            return kind
        return PortType.VIDEO if kind in FRAME_TYPES else None

    def clip_ports(self, spec: GraphSpec, families: Mapping[str, Any], node_id: str) -> frozenset[str]:
        """The input ports of `node_id` wired to a Video that it runs over frame by frame, following
        wires upstream (a node over a clip gives Videos); wires that do not resolve count as none."""
        if node_id in self.clips:
            return self.clips[node_id]
        self.clips[node_id] = frozenset()  # a cycle (reported elsewhere) ends here
        node = spec.nodes[node_id]
        family = families.get(node.type)
        found = set()
        for port_name, ref in node.inputs.items() if family is not None else ():
            parsed, port = parse_reference(ref), family.inputs.get(port_name)
            if parsed is None or port is None:
                continue
            src_node, src_port = parsed
            if src_node is None:
                kind = spec.inputs[src_port].type if src_port in spec.inputs else None
            else:
                src_family = families.get(spec.nodes[src_node].type) if src_node in spec.nodes else None
                ok = src_family is not None and src_port in src_family.outputs
                kind = self.source_type(spec, families, Source(src_node, src_port)) if ok else None
            if kind is not None and over_clip(kind, port):
                found.add(port_name)
        self.clips[node_id] = frozenset(found)
        return self.clips[node_id]

    def report_clip_output(
        self,
        spec: GraphSpec,
        families: Mapping[str, Any],
        src: Source,
        at: tuple[Any, ...],
        node_id: str | None,
        port_name: str | None,
    ) -> None:
        assert src.node is not None
        family = families[spec.nodes[src.node].type]
        kind = family.outputs[src.port].type
        clip = ", ".join(sorted(self.clip_ports(spec, families, src.node)))
        readable = [f"{src.node}.{n}" for n, p in family.outputs.items() if p.type in FRAME_TYPES]
        self.report(
            "clip_output",
            f"'{src}' ({kind.title}) has no clip form: node '{src.node}' runs over a video's frames "
            f"(its {clip} is wired to a Video), and only its per-frame Image, Mask, DepthMap and "
            "SegmentationMap outputs come back as a Video.",
            at,
            node=node_id,
            port=port_name,
            hint=f"Read {', '.join(readable)} instead." if readable else "Wire an Image, not a Video, into it.",
        )

    def resolve_when(self, spec: GraphSpec, node_id: str, node: NodeSpec) -> Condition | None:
        """A node's `when:` names a Bool graph input or a switch param."""
        if node.when is None:
            return None
        when = Condition(node.when, False) if isinstance(node.when, str) else Condition(node.when["not"], True)
        at = ("nodes", node_id, "when")
        switches = [n for n, p in spec.params.items() if isinstance(p, SwitchSpec)]
        bools = [n for n, i in spec.inputs.items() if i.type is PortType.BOOL]
        if when.name in spec.inputs and when.name not in bools:
            self.report(
                "type_mismatch",
                f"node '{node_id}': when: '{when.name}' is a {spec.inputs[when.name].type.title} graph input; "
                "a condition must be a Bool.",
                at,
                node=node_id,
            )
        elif when.name in spec.params and when.name not in switches:
            self.report(
                "bad_reference",
                f"node '{node_id}': when: param '{when.name}' sets '{spec.params[when.name]}'; a condition must be "
                "a switch.",
                at,
                node=node_id,
                hint=f"Declare one: 'params: {{{when.name}_on: {{type: bool, default: true}}}}'.",
            )
        elif when.name not in spec.inputs and when.name not in spec.params:
            self.report(
                "bad_reference",
                f"node '{node_id}': when: no Bool graph input or switch param named '{when.name}'.",
                at,
                node=node_id,
                hint=did_you_mean(when.name, bools + switches, allowed_label="Conditions")
                + f" Declare one: 'params: {{{when.name}: {{type: bool, default: true}}}}' or a Bool graph input.",
            )
        else:
            return when
        return None

    def check_branches(self, plan: Plan) -> None:
        """Every graph output has a value on every branch (each combination of the conditions'
        values); a node that runs on no branch is worth a warning."""
        names = plan.conditions
        if not names:
            return
        if len(names) > MAX_CONDITIONS:
            self.report(
                "too_many_conditions",
                f"the graph branches on {len(names)} conditions ({', '.join(names)}); at most {MAX_CONDITIONS} "
                "are checked.",
                ("nodes",),
            )
            return
        missing: dict[str, dict[str, bool]] = {}  # output -> the first branch that leaves it without a value
        ever: set[str] = set()
        for combo in itertools.product((True, False), repeat=len(names)):
            values = dict(zip(names, combo))
            active = plan.active(values)
            ever |= active
            for name, src in plan.outputs.items():
                if (
                    src.node is not None
                    and src.node not in active
                    and name not in missing
                    and name not in plan.optional_outputs
                ):
                    missing[name] = values
        for name, values in missing.items():
            src = plan.outputs[name]
            cause = self.skip_cause(plan, src.node, values)
            branch = " and ".join(f"{k} is {str(v).lower()}" for k, v in values.items())
            line = (locate(self.tree, ("nodes", cause.id, "when")) or locate(self.tree, ("nodes", cause.id)) or ("?",))[
                0
            ]
            self.report(
                "no_value_on_branch",
                f"output '{name}' has no value when {branch}: it comes from '{src}', and node '{cause.id}' "
                f"(line {line}) is skipped then"
                + (f" (when: {cause.when})." if cause.when else " (an input it needs is skipped)."),
                ("outputs", name),
                node=cause.id,
                hint="Give it a value on every branch: wire it from a node of type 'first' (first_text, "
                f"first_mask, ...) with inputs {{a: {src}, b: <a node that runs then>.{src.port}}}.",
            )
        for node_id in plan.nodes:
            if node_id not in ever and not missing:
                self.report(
                    "never_runs",
                    f"node '{node_id}' runs on no branch: its conditions, or those of the nodes it reads, never hold "
                    "together.",
                    ("nodes", node_id),
                    node=node_id,
                    severity="warning",
                )

    @staticmethod
    def skip_cause(plan: Plan, node_id: str, values: Mapping[str, bool]) -> PlannedNode:
        """The node whose own `when:` fails first on the way up from `node_id` (or `node_id`)."""
        node = plan.nodes[node_id]
        if node.when is not None and not node.when.holds(values):
            return node
        active = plan.active(values)
        for src in node.inputs.values():
            if src.node is not None and src.node not in active:
                found = _Validator.skip_cause(plan, src.node, values)
                if found.when is not None:
                    return found
        return node

    def resolve_params(self, spec: GraphSpec, planned: Mapping[str, PlannedNode]) -> None:
        """Each graph-level request param names a node param its family lets a request set,
        or is a switch (a Bool that nodes' `when:` reads)."""
        for name, target in spec.params.items():
            at = ("params", name)
            if name in spec.inputs:
                self.report(
                    "duplicate",
                    f"'{name}' is both a graph input and a graph param; a route mapping could not tell them apart.",
                    at,
                )
            if isinstance(target, SwitchSpec):
                if not any(n.when is not None and n.when.name == name for n in planned.values()):
                    self.report(
                        "unused_switch",
                        f"switch '{name}' is read by no node's 'when:'.",
                        at,
                        severity="warning",
                    )
                continue
            parsed = parse_reference(target)
            if parsed is None or parsed[0] is None:
                self.report(
                    "bad_reference",
                    f"param '{name}': '{target}' is not a 'node.param' reference.",
                    at,
                    hint="Name the node and its param, e.g. 'generate.seed'.",
                )
                continue
            node_id, param = parsed
            if node_id in self.broken or "*nodes" in self.broken:
                continue  # the node is reported already
            if node_id not in spec.nodes:
                self.report(
                    "bad_reference",
                    f"param '{name}': no node named '{node_id}'.",
                    at,
                    hint=did_you_mean(node_id, spec.nodes, allowed_label="Nodes"),
                )
                continue
            node = planned.get(node_id)
            if node is None:
                continue  # its type or params are reported already
            settable = sorted(node.family.request_params)
            if param not in node.family.Params.model_fields:
                self.report(
                    "bad_reference",
                    f"param '{name}': node '{node_id}' ({node.family.type}) has no param '{param}'.",
                    at,
                    node=node_id,
                    hint=did_you_mean(param, settable, allowed_label=f"Settable params of {node.family.type}"),
                )
            elif param not in node.family.request_params:
                self.report(
                    "fixed_param",
                    f"param '{name}': '{target}' is fixed by the graph; a request may not set it "
                    f"(a {node.family.type} node lets a request set {', '.join(settable) or 'nothing'}).",
                    at,
                    node=node_id,
                )

    def resolve_ref(
        self,
        ref: str,
        spec: GraphSpec,
        families: Mapping[str, Any],
        at: tuple[Any, ...],
        what: str,
        node_id: str | None,
        port_name: str | None,
    ) -> Source | None:
        parsed = parse_reference(ref)
        if parsed is None:
            self.report(
                "bad_reference",
                f"{what}: '{ref}' is not a graph input name or a 'node.port' reference.",
                at,
                node=node_id,
                port=port_name,
            )
            return None
        src_node, src_port = parsed
        if (src_node or src_port) in self.broken or ("*nodes" if src_node else "*inputs") in self.broken:
            return None  # what it points at is already reported
        if src_node is None:
            if src_port in spec.inputs:
                return Source(None, src_port)
            if src_port in spec.nodes:
                self.report(
                    "bad_reference",
                    f"{what}: '{ref}' is a node; name one of its output ports.",
                    at,
                    node=node_id,
                    port=port_name,
                    hint=self.ports_hint(src_port, spec, families),
                )
            else:
                self.report(
                    "bad_reference",
                    f"{what}: no graph input named '{ref}'.",
                    at,
                    node=node_id,
                    port=port_name,
                    hint=did_you_mean(
                        ref, list(spec.inputs) + list(spec.nodes), allowed_label="Graph inputs and nodes"
                    ),
                )
            return None
        if src_node not in spec.nodes:
            self.report(
                "bad_reference",
                f"{what}: no node named '{src_node}'.",
                at,
                node=node_id,
                port=port_name,
                hint=did_you_mean(src_node, spec.nodes, allowed_label="Nodes"),
            )
            return None
        family = families.get(spec.nodes[src_node].type)
        if family is None:
            return None  # its unknown type is already reported
        if src_port not in family.outputs:
            self.report(
                "bad_reference",
                f"{what}: node '{src_node}' has no output port '{src_port}'.",
                at,
                node=node_id,
                port=port_name,
                hint=self.ports_hint(src_node, spec, families, src_port),
            )
            return None
        return Source(src_node, src_port)

    def ports_hint(self, node: str, spec: GraphSpec, families: Mapping[str, Any], near: str | None = None) -> str:
        family = families.get(spec.nodes[node].type)
        if family is None:
            return ""
        listed = ", ".join(f"{node}.{n} ({p.label})" for n, p in family.outputs.items())
        close = did_you_mean(near, family.outputs).split("Allowed")[0] if near else ""
        return f"{close}Outputs of {node}: {listed}."

    def suggest_port(
        self, src_type: PortType, spec: GraphSpec, families: Mapping[str, Any], src: Source, dst: str
    ) -> str:
        """Name the ports that would fit: another input port of the destination that takes
        this type, or another output of the source that the destination port takes."""
        family = families[spec.nodes[dst].type]
        fits = [f"'{dst}.{n}' ({p.label})" for n, p in family.inputs.items() if compatible(src_type, p)]
        if fits:
            return f"Did you mean {' or '.join(fits)}?"
        return ""

    def check_graph(
        self, spec: GraphSpec, nodes: Mapping[str, PlannedNode], outputs: Mapping[str, Source], graph: nx.DiGraph
    ) -> list[str]:
        cycles = list(_first_cycles(graph))
        for cycle in cycles:
            lines = [graph.edges[a, b].get("line") for a, b in zip(cycle, cycle[1:])]
            last = cycle[-2]
            self.report(
                "cycle",
                f"cycle: {' -> '.join(cycle)} (edges at lines {', '.join(str(x) for x in lines)}).",
                ("nodes", last),
                node=last,
                hint="Remove one edge or add a second node.",
            )
        if cycles:
            return []
        order = list(nx.lexicographical_topological_sort(graph, key=list(spec.nodes).index))
        if any(p.severity == "error" for p in self.problems):
            return order  # dead ends are noise next to real errors: wiring may be the cause
        reaching = {s.node for s in outputs.values() if s.node}
        for target in list(reaching):
            reaching |= nx.ancestors(graph, target)
        for node_id in spec.nodes:
            if node_id not in reaching:
                self.report(
                    "dead_end",
                    f"node '{node_id}' reaches no output; its results would be computed and thrown away.",
                    ("nodes", node_id),
                    node=node_id,
                    severity="warning",
                    hint="Wire one of its ports to an output or remove it.",
                )
        used = {s.port for n in nodes.values() for s in n.inputs.values() if s.node is None} | {
            s.port for s in outputs.values() if s.node is None
        }
        used |= {n.when.name for n in nodes.values() if n.when is not None}
        for name in spec.inputs:
            if name not in used:
                self.report(
                    "unused_input",
                    f"graph input '{name}' is not wired to any node.",
                    ("inputs", name),
                    severity="warning",
                )
        return order


def _missing_family_hint(name: str, missing: Mapping[str, str], families: Mapping[str, Any]) -> str:
    """Why a family is not in the catalogue, where it can be known: its plug-in failed to
    load, or the graph requires packages this machine lacks (one of them provides it)."""
    why = broken(name)
    if why:
        return f"It is not a built-in family: {why}."
    absent = [r for r, problem in missing.items() if "not installed" in problem or "is not met" in problem]
    if absent:
        listed = " ".join(f"'{r}'" for r in absent)
        return (
            f"It is not a built-in family; it comes from a package this graph requires: pip install {listed}, "
            f"then `capgraph nodes {name}` lists it."
        )
    hint = did_you_mean(name, families, allowed_label="Registered types")
    if hint.startswith("Did you mean"):
        return hint
    return (
        hint
        + " A plug-in family needs its package installed (list it under 'requires:' and a machine without it names it)."
    )


def _first_cycles(graph: nx.DiGraph, limit: int = 5) -> Iterator[list[str]]:
    for count, cycle in enumerate(nx.simple_cycles(graph)):
        if count >= limit:
            return
        start = cycle.index(min(cycle))  # print each cycle from a stable starting node
        cycle = cycle[start:] + cycle[:start]
        yield cycle + [cycle[0]]


def _duplicates(tree: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[int, int], int]]:
    if isinstance(tree, LocatedDict):
        for key, pos in tree.duplicates:
            yield key, pos, tree.key_pos[key][0]
        for key, value in tree.items():
            yield from _duplicates(value, path + (key,))
    elif isinstance(tree, list):
        for value in tree:
            yield from _duplicates(value, path)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub)model an error location points into."""
    for step in loc:
        field = model.model_fields.get(step) if isinstance(step, str) else None
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif field is not None:
            for arg in getattr(annotation, "__args__", ()):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    model = arg
    return [f.alias or name for name, f in model.model_fields.items()]  # as written in YAML (`from`)


def _raw(tree: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        if not isinstance(tree, Mapping) or step not in tree:
            return {}
        tree = tree[step]
    return tree if isinstance(tree, Mapping) else {}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 50 else text[:47] + "..."
