"""A node deployment: one Ray Serve replica running one unit (a node, or a fused group).

The replica loads its nodes and runs one warm-up batch in `__init__`, so Ray marks it
RUNNING, and routes traffic to it, only once its weights are in memory and warm; a new
replica added by autoscaling never takes a request cold. Frames arrive one per call and
leave Ray Serve's batcher as one list: each node's `run_batch` runs once per batch, in a
worker thread so the batcher keeps filling the next batch meanwhile.

What crosses the replica boundary is plain data (numpy arrays, pydantic params, dicts).
A call returns `{"values": {"node.port": value}, "meta": {node_id: {...}}}`, or
`{"error": {...}}` for a frame that failed, which downstream units pass on untouched, so
one bad frame never fails the other frames of its batch.
"""

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from engine.errors import InputError
from engine.executor import NodeFailed
from engine.node import Node, NodeParams
from engine.plan import Plan
from serve.compiler import Unit

log = logging.getLogger("ray.serve")

FATAL_MARKERS = ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cudaErrorLaunchFailure", "NCCL error")
"""Errors after which the process's GPU context is unusable: `check_health` then fails and
Ray replaces the replica."""
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass
class _Frame:
    values: dict[str, Any]
    params: dict[str, NodeParams]
    arrived: float
    meta: dict[str, dict[str, float]]


class NodeGroup:
    """Runs the nodes of one unit; the ingress calls it once per frame."""

    def __init__(self, plan: Plan, unit: Unit):
        self.plan, self.unit = plan, unit
        self.device, self.dtype = _device(unit)
        self.capability = plan.capability
        self.queued = 0
        self.fatal: str | None = None
        self.nodes: dict[str, Node] = {}
        self.report: dict[str, dict[str, Any]] = {}
        self.memory_cap = _cap_gpu_memory(unit, self.device)
        for node_id in unit.nodes:
            self._load(node_id)
        self._forward.set_max_batch_size(unit.max_batch_size)
        self._forward.set_batch_wait_timeout_s(unit.batch_wait_s)
        tags = {"capability": self.capability, "unit": unit.name}
        self.latency = Histogram("capgraph_node_latency_ms", "Milliseconds a node took for one batch",
                                 boundaries=LATENCY_BUCKETS_MS, tag_keys=("capability", "unit", "node"))
        self.batch_size = Histogram("capgraph_node_batch_size", "Frames per batch a node ran",
                                    boundaries=BATCH_BUCKETS, tag_keys=("capability", "unit", "node"))
        self.queue_length = Gauge("capgraph_node_queue_length", "Frames waiting for the next batch",
                                  tag_keys=("capability", "unit"))
        self.failures = Counter("capgraph_node_failed_frames", "Frames a node failed", tag_keys=("capability", "unit", "node"))
        for metric in (self.latency, self.batch_size, self.queue_length, self.failures):
            metric.set_default_tags(dict(tags))  # Ray adds its own tags to the dict it is given
        self.queue_length.set(0)

    def _load(self, node_id: str) -> None:
        planned = self.plan.nodes[node_id]
        log.info("capgraph: node '%s' (%s) loading on %s (%s)", node_id, planned.family.type, self.device, self.dtype)
        start = time.perf_counter()
        node = planned.build()
        node.load(self.device, self.dtype)
        loaded = time.perf_counter()
        node.warmup()
        warm = time.perf_counter()
        self.nodes[node_id] = node
        self.report[node_id] = {"loaded": True, "warm": True, "device": self.device, "dtype": self.dtype,
                                "weight_bytes": node.weight_bytes, "load_s": round(loaded - start, 3),
                                "warmup_s": round(warm - loaded, 3)}
        headroom = ""
        if self.memory_cap:
            headroom = f"; GPU cap {self.memory_cap / 2**30:.2f} GiB, {(self.memory_cap - _cuda_allocated()) / 2**30:.2f} GiB free"
            self.report[node_id]["gpu_cap_bytes"] = self.memory_cap
        log.info("capgraph: node '%s' loaded %s bytes of weights (%.1f MiB) in %.2fs, warm-up %.2fs%s",
                 node_id, f"{node.weight_bytes:,}", node.weight_bytes / 2**20, loaded - start, warm - loaded, headroom)

    async def __call__(self, graph_inputs: Mapping[str, Any], overrides: Mapping[str, NodeParams], *upstream: Mapping[str, Any]) -> dict[str, Any]:
        """One frame: the graph inputs this unit reads, its nodes' param overrides, and
        the results of the units it reads from (resolved by Ray from their responses)."""
        values = dict(graph_inputs)
        meta: dict[str, dict[str, float]] = {}
        for result in upstream:
            if "error" in result:
                return result  # a frame that failed upstream stays failed
            values.update(result["values"])
            meta.update(result["meta"])
        params = {node_id: overrides.get(node_id, self.plan.nodes[node_id].params) for node_id in self.unit.nodes}
        self.queued += 1
        self.queue_length.set(self.queued)
        return await self._forward(_Frame(values, params, time.perf_counter(), meta))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _forward(self, frames: list[_Frame]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        self.queued -= len(frames)
        self.queue_length.set(self.queued)
        results = await asyncio.to_thread(self._run_isolated, frames)
        for frame, result in zip(frames, results):
            if "meta" in result:
                first = result["meta"][self.unit.nodes[0]]
                first["queue_ms"] = round((start - frame.arrived) * 1000.0, 3)
                result["meta"] = frame.meta | result["meta"]
        return results

    def _run_isolated(self, frames: Sequence[_Frame]) -> list[dict[str, Any]]:
        """Run a batch; if it fails, run its frames one by one so only the bad one fails."""
        try:
            return self._run(frames)
        except (InputError, NodeFailed) as exc:
            if len(frames) > 1:
                return [self._run_isolated([f])[0] for f in frames]
            return [self._error(exc)]

    def _run(self, frames: Sequence[_Frame]) -> list[dict[str, Any]]:
        count = len(frames)
        values = [dict(f.values) for f in frames]
        meta: dict[str, dict[str, float]] = {}
        for node_id in self.unit.nodes:
            planned = self.plan.nodes[node_id]
            batch = [{port: values[i][str(src)] for port, src in planned.inputs.items()} for i in range(count)]
            start = time.perf_counter()
            try:
                out = self.nodes[node_id].run_batch(batch, [f.params[node_id] for f in frames])
            except InputError:
                raise
            except Exception as exc:
                raise NodeFailed(planned, batch, exc) from exc
            if len(out) != count:
                raise NodeFailed(planned, batch, RuntimeError(f"returned {len(out)} results for {count} frames"))
            ms = (time.perf_counter() - start) * 1000.0
            self.latency.observe(ms, tags={"node": node_id})
            self.batch_size.observe(count, tags={"node": node_id})
            meta[node_id] = {"ms": round(ms, 3), "batch": count}
            for i in range(count):
                for port, value in out[i].items():
                    values[i][f"{node_id}.{port}"] = value
        wanted = [str(s) for s in self.unit.exports]
        return [{"values": {k: values[i][k] for k in wanted}, "meta": {k: dict(v) for k, v in meta.items()}} for i in range(count)]

    def _error(self, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, InputError):
            return {"error": {"status": exc.status, "field": exc.field, "msg": exc.message}}
        node_id = getattr(exc, "node_id", self.unit.nodes[0])
        self.failures.inc(tags={"node": node_id})
        text = str(exc)
        if any(marker in text for marker in FATAL_MARKERS):
            self.fatal = text
        log.error("capgraph: %s", text)
        return {"error": {"status": 500, "node": node_id, "msg": text}}

    def state(self) -> dict[str, Any]:
        """What this replica reports to the ingress's /health: every node loaded and warm."""
        return {"unit": self.unit.name, "nodes": self.report, "queued": self.queued, "fatal": self.fatal, "pid": os.getpid()}

    def check_health(self) -> None:
        """Called by Ray every `health_check_period_s`; raising makes Ray replace us."""
        if self.fatal:
            raise RuntimeError(f"unit '{self.unit.name}' hit an unrecoverable device error: {self.fatal}")


def _device(unit: Unit) -> tuple[str, str]:
    """CUDA with fp16 where Ray gave this replica a GPU, else CPU with fp32.
    `CAPGRAPH_DEVICE` forces a device (e.g. `cpu`)."""
    forced = os.environ.get("CAPGRAPH_DEVICE")
    if forced:
        return forced, "float16" if forced.startswith("cuda") else "float32"
    if unit.num_gpus > 0:
        import torch

        if torch.cuda.is_available():
            return "cuda", "float16"
    return "cpu", "float32"


def _cap_gpu_memory(unit: Unit, device: str) -> int:
    """Ray's fractional `num_gpus` schedules but does not limit memory: a 0.25 replica
    could still take the whole GPU. Cap this process at its fraction; returns the cap in
    bytes (0: no cap)."""
    if not device.startswith("cuda") or not 0 < unit.num_gpus < 1:
        return 0
    import torch

    torch.cuda.set_per_process_memory_fraction(unit.num_gpus)
    return int(torch.cuda.get_device_properties(0).total_memory * unit.num_gpus)


def _cuda_allocated() -> int:
    import torch

    return torch.cuda.memory_allocated()
