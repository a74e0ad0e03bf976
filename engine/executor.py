"""The in-process executor: a validated Plan run in one process, the embedded default.

`capgraph run` and the tests use it, and it is the baseline the Ray Serve version is
measured against. Each node is built and loaded once; a batch of frames goes through the
nodes in topological order, every node called once per batch.
"""

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import InputError
from engine.node import Node, NodeParams
from engine.plan import Plan, PlannedNode
from engine.values import coerce

log = logging.getLogger("capgraph")


class NodeFailed(RuntimeError):
    """A node raised while running: names the node, its family and what it was given."""

    def __init__(self, node: PlannedNode, batch: Sequence[Mapping[str, Any]], cause: BaseException):
        shapes = ", ".join(f"{k}={_shape(v)}" for k, v in (batch[0].items() if batch else ()))
        super().__init__(f"node '{node.id}' ({node.family.type}) failed on a batch of {len(batch)} [{shapes}]: {type(cause).__name__}: {cause}")
        self.node_id = node.id


@dataclass(frozen=True)
class RunResult:
    outputs: list[dict[str, Any]]
    """One dict of graph outputs per frame, in input order."""
    timings_ms: dict[str, float]
    """Milliseconds each node took for the whole batch."""


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
        raise InputError(f"{prefix}.{name}", f"the graph has no input '{name}'; its inputs are {', '.join(plan.spec.inputs) or '(none)'}")
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
        self.dtype = dtype or (auto_dtype if device is None else ("float16" if self.device.startswith("cuda") else "float32"))
        self.nodes: dict[str, Node] = {}
        self.load_s: dict[str, float] = {}
        self.release_after = _release_schedule(plan)

    def load(self, warmup: bool = True) -> dict[str, float]:
        """Build, load and warm every node once. Returns seconds per node."""
        for node_id, planned in self.plan.nodes.items():
            if node_id in self.nodes:
                continue
            start = time.perf_counter()
            node = planned.build()
            node.load(self.device, self.dtype)
            if warmup:
                node.warmup()
            self.nodes[node_id] = node
            self.load_s[node_id] = time.perf_counter() - start
            log.info("loaded %s (%s) in %.2fs, %d bytes of weights", node_id, planned.family.type, self.load_s[node_id], node.weight_bytes)
        return self.load_s

    def run(self, frames: Sequence[Mapping[str, Any]], params: Mapping[str, Any] | None = None) -> RunResult:
        """Push a batch of frames (each a dict of graph inputs) through the graph.

        `params` are request overrides `{"node.param": value}` applied to every frame.
        """
        if not self.nodes:
            self.load()
        checked = [check_inputs(self.plan, f, "inputs" if len(frames) == 1 else f"inputs[{i}]") for i, f in enumerate(frames)]
        node_params = self.plan.params_for(params)
        return self.run_checked(checked, [node_params] * len(checked))

    def run_checked(self, frames: Sequence[Mapping[str, Any]], params: Sequence[Mapping[str, NodeParams]]) -> RunResult:
        """The hot loop: frames already checked, per-frame params already resolved."""
        results: dict[str, list[dict[str, Any]]] = {}
        timings: dict[str, float] = {}
        count = len(frames)
        for node_id, planned in self.plan.nodes.items():
            wires = planned.inputs.items()
            batch = [
                {port: (frames[i][src.port] if src.node is None else results[src.node][i][src.port]) for port, src in wires}
                for i in range(count)
            ]
            start = time.perf_counter()
            try:
                out = self.nodes[node_id].run_batch(batch, [p[node_id] for p in params])
            except InputError:
                raise
            except Exception as exc:
                raise NodeFailed(planned, batch, exc) from exc
            timings[node_id] = (time.perf_counter() - start) * 1000.0
            if len(out) != count:
                raise NodeFailed(planned, batch, RuntimeError(f"returned {len(out)} results for {count} frames"))
            results[node_id] = out
            for done in self.release_after[node_id]:  # frames are large: free each one as soon as
                del results[done]  # its last reader is done, so the allocator can reuse it
        outputs = [
            {name: (frames[i][src.port] if src.node is None else results[src.node][i][src.port]) for name, src in self.plan.outputs.items()}
            for i in range(count)
        ]
        return RunResult(outputs, timings)


def _release_schedule(plan: Plan) -> dict[str, list[str]]:
    """For each node, the nodes whose results nobody needs once it has run."""
    kept = {src.node for src in plan.outputs.values() if src.node}
    last_reader: dict[str, str] = {}
    for node_id, node in plan.nodes.items():  # topological order: the last write wins
        for src in node.inputs.values():
            if src.node is not None:
                last_reader[src.node] = node_id
    schedule: dict[str, list[str]] = {node_id: [] for node_id in plan.nodes}
    for producer, reader in last_reader.items():
        if producer not in kept:
            schedule[reader].append(producer)
    return schedule


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{getattr(value, 'dtype', '')}{list(shape)}"
    return type(value).__name__
