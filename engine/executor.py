"""The in-process executor: a validated Plan run in one process, the embedded default.

`capgraph run` and the tests use it, and it is the baseline the Ray Serve version is
measured against. Each node is built and loaded once; a batch of frames goes through the
nodes in topological order, every node called once per batch.
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capgraph.engine.codecs import coerce
from capgraph.engine.errors import InputError
from capgraph.engine.node import Node, NodeParams
from capgraph.engine.plan import SWITCHES, Plan
from capgraph.engine.runloop import load_nodes, release_schedule, run_nodes


@dataclass(frozen=True)
class RunResult:
    outputs: list[dict[str, Any]]
    """One dict of graph outputs per frame, in input order."""
    timings_ms: dict[str, float]
    """Milliseconds each node took for the whole batch; a node skipped for every frame is absent."""
    skipped: list[tuple[str, ...]] = field(default_factory=list)
    """The nodes skipped for each frame (`when:`, docs/graph-format.md "Branches"), in input order."""


def pick_device(plan: Plan) -> tuple[str, str]:
    """CUDA with fp16 when a model node is present and a GPU is visible, else CPU with fp32.
    `CAPGRAPH_DEVICE=cpu` forces the CPU. Torch is only imported when a node needs it."""
    forced = os.environ.get("CAPGRAPH_DEVICE")
    if not any(n.family.uses_gpu for n in plan.nodes.values()) or forced == "cpu":
        return "cpu", "float32"
    import torch

    if forced:
        return forced, "float16" if forced.startswith("cuda") else "float32"
    return ("cuda", "float16") if torch.cuda.is_available() else ("cpu", "float32")


def check_inputs(plan: Plan, frame: Mapping[str, Any], prefix: str = "inputs") -> dict[str, Any]:
    """A frame's graph inputs with defaults filled in; InputError names what is wrong."""
    unknown = frame.keys() - plan.spec.inputs.keys()
    if unknown:
        name = sorted(unknown)[0]
        raise InputError(
            f"{prefix}.{name}",
            f"the graph has no input '{name}'; its inputs are {', '.join(plan.spec.inputs) or '(none)'}",
        )
    values = {}
    for name, spec in plan.spec.inputs.items():
        value = frame.get(name, spec.default)
        if value is None:
            raise InputError(f"{prefix}.{name}", f"required input ({spec.type.title}) is missing")
        values[name] = coerce(spec.type, value, f"{prefix}.{name}")
    return values


class Executor:
    def __init__(self, plan: Plan, device: str | None = None, dtype: str | None = None):
        self.plan = plan
        auto_device, auto_dtype = pick_device(plan)
        self.device = device or auto_device
        self.dtype = dtype or (
            auto_dtype if device is None else ("float16" if self.device.startswith("cuda") else "float32")
        )
        self.nodes: dict[str, Node] = {}
        self.load_s: dict[str, float] = {}
        self.release_after = release_schedule(plan)

    def load(self, warmup: bool = True) -> dict[str, float]:
        """Build, load and warm every node once. Returns seconds per node."""
        missing = [node_id for node_id in self.plan.nodes if node_id not in self.nodes]
        report: dict[str, dict[str, Any]] = {}
        self.nodes.update(load_nodes(self.plan, missing, self.device, self.dtype, report, warmup))
        self.nodes = {node_id: self.nodes[node_id] for node_id in self.plan.nodes}  # plan order
        for node_id, entry in report.items():
            self.load_s[node_id] = entry["load_s"] + entry["warmup_s"]
        return self.load_s

    def run(self, frames: Sequence[Mapping[str, Any]], params: Mapping[str, Any] | None = None) -> RunResult:
        """Push a batch of frames (each a dict of graph inputs) through the graph.

        `params` are request overrides `{"node.param": value}` applied to every frame.
        """
        return self.run_resolved(frames, self.plan.params_for(params))

    def run_resolved(self, frames: Sequence[Mapping[str, Any]], node_params: Mapping[str, NodeParams]) -> RunResult:
        """`run` with every node's params already resolved, in the form the front ends pass on
        (`serve.capability.http.check_params`, `Plan.params_for`); a node left out (`{}`: no
        request params) runs with the graph's params."""
        return self.run_each(frames, [node_params] * len(frames))

    def run_each(
        self, frames: Sequence[Mapping[str, Any]], node_params: Sequence[Mapping[str, NodeParams]]
    ) -> RunResult:
        """`run_resolved` with each frame's own resolved params (frames of several live
        streams batched together, each stream with its own prompt)."""
        if not self.nodes:
            self.load()
        checked = [
            check_inputs(self.plan, f, "inputs" if len(frames) == 1 else f"inputs[{i}]") for i, f in enumerate(frames)
        ]
        resolved = []
        for own in node_params:
            one = {node_id: own.get(node_id, node.params) for node_id, node in self.plan.nodes.items()}
            if SWITCHES in own:  # a request's switches travel with the node params
                one[SWITCHES] = own[SWITCHES]
            resolved.append(one)
        return self.run_checked(checked, resolved)

    def run_checked(self, frames: Sequence[Mapping[str, Any]], params: Sequence[Mapping[str, NodeParams]]) -> RunResult:
        """The hot loop: frames already checked, per-frame params already resolved. A node
        skipped for a frame (its `when:` does not hold) is not run for it."""
        values = [dict(frame) for frame in frames]
        skipped = [self.plan.skipped(frame, p) for frame, p in zip(frames, params)]
        active = [frozenset(self.plan.nodes).difference(s) for s in skipped] if any(skipped) else None
        timings = run_nodes(
            self.plan, self.nodes, list(self.plan.nodes), values, params, release=self.release_after, active=active
        )
        # an optional output whose node was skipped for this frame is left out
        outputs = [
            {name: frame[str(src)] for name, src in self.plan.outputs.items() if str(src) in frame} for frame in values
        ]
        return RunResult(outputs, timings, skipped)
