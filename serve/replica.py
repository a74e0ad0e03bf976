"""A node deployment: one Ray Serve replica running one unit (a node, or a fused group).

It loads and warms its nodes before Ray routes traffic to it, batches concurrent frames
(the next batch starts as the last ends), passes a failed frame on as data so its batch
survives, and fails its health check when a batch hangs past `stuck_after_s` so Ray
replaces it. docs/serving.md ("The code, module by module") has the reasons.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

from capgraph.engine.errors import InputError, NodeFailed
from capgraph.engine.node import Node, NodeParams
from capgraph.engine.plan import Plan
from capgraph.engine.runloop import load_nodes, run_nodes
from capgraph.serve.capability import unit_stamps
from capgraph.serve.cluster import CoreShare, machine_cores, respread, sharing_on
from capgraph.serve.compile import Alias, Unit, write_measured

log = logging.getLogger("ray.serve")

FATAL_MARKERS = ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cudaErrorLaunchFailure", "NCCL error")
"""Errors after which the process's GPU context is unusable: `check_health` then fails and
Ray replaces the replica."""
STUCK_FACTOR, STUCK_MARGIN_S = 3.0, 30.0
"""A batch is stuck past max(3 x request_timeout_s, request_timeout_s + 30 s): see `stuck_after`."""
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
SAVE_COSTS_EVERY_S = 30.0
"""How often a serving replica records what its nodes cost (`serve.compile.overlay.write_measured`)."""
COST_SMOOTHING = 0.2
BATCH_SHARE = 0.25
"""Where live frames and batch frames both wait, the share of each batch's places that
batch frames keep (live frames take the rest first): batch jobs slow down, never starve."""


@dataclass
class _Frame:
    values: dict[str, Any]
    params: dict[str, NodeParams]
    arrived: float
    meta: dict[str, dict[str, float]]
    done: "asyncio.Future[dict[str, Any]] | None" = field(default=None, repr=False)
    active: frozenset[str] | None = None
    """The nodes that run for this frame (`Plan.active`); None: all of them."""
    trace: dict[str, dict[str, float]] = field(default_factory=dict)
    """The upstream units' timestamps (`serve.capability.trace`); this unit adds its own."""
    received: float = field(default_factory=time.time)
    live: bool = False
    """A live stream's frame: it goes ahead of queued batch frames (`Batcher.take`)."""


class Batcher:
    """Frames in one at a time, batches out: the next batch starts the moment the
    previous one ends, holding every frame that queued meanwhile (up to `max_size`). A
    frame that finds the batcher idle waits up to `wait_s` for others to join it. Live
    frames go first, batch frames keep `batch_share` of the places (`take`)."""

    def __init__(
        self,
        run: Callable[[list[_Frame]], Awaitable[list[dict[str, Any]]]],
        max_size: int,
        wait_s: float,
        batch_share: float = BATCH_SHARE,
    ):
        self.run, self.max_size, self.wait_s, self.batch_share = run, max_size, wait_s, batch_share
        self.queue: list[_Frame] = []
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.owed = 0.0
        """Places owed to waiting batch frames while live frames crowd them out."""
        self.taken = {"live": 0, "batch": 0}
        """Frames run by kind, for the console."""

    def __len__(self) -> int:
        return len(self.queue)

    async def submit(self, frame: _Frame) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._loop())
        frame.done = loop.create_future()
        self.queue.append(frame)
        self.arrived.set()
        return await frame.done

    async def _loop(self) -> None:
        while True:
            while not self.queue:
                self.arrived.clear()
                await self.arrived.wait()
            deadline = self.queue[0].arrived + self.wait_s  # frames that queued behind a batch have waited enough
            while len(self.queue) < self.max_size and (left := deadline - time.perf_counter()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except TimeoutError:
                    break
            batch = [f for f in self.take() if f.done is not None and not f.done.cancelled()]  # callers gone: skip them
            if not batch:
                continue
            try:
                results = await self.run(batch)
            except Exception as exc:  # the batch as a whole failed: every caller hears why
                for f in batch:
                    if not f.done.done():
                        f.done.set_exception(exc)
                continue
            for f, result in zip(batch, results):
                if not f.done.done():
                    f.done.set_result(result)

    def take(self) -> list[_Frame]:
        """The next batch: oldest first; where live and batch frames both wait, live frames
        first, with `batch_share` of the places (owed across batches, so a batch of one
        still gives a batch frame every 1/share batches) kept for batch frames."""
        live = [f for f in self.queue if f.live]
        if not live or len(live) == len(self.queue):
            self.owed = 0.0
            batch, self.queue = self.queue[: self.max_size], self.queue[self.max_size :]
        else:
            others = [f for f in self.queue if not f.live]
            self.owed += self.batch_share * self.max_size
            owed = min(len(others), int(self.owed))
            n_live = min(len(live), self.max_size - owed)
            n_batch = min(len(others), self.max_size - n_live)
            self.owed = max(0.0, self.owed - n_batch)
            chosen = {id(f) for f in live[:n_live] + others[:n_batch]}
            batch = [f for f in self.queue if id(f) in chosen]
            self.queue = [f for f in self.queue if id(f) not in chosen]
        for f in batch:
            self.taken["live" if f.live else "batch"] += 1
        return batch


def stuck_after(request_timeout_s: float) -> float:
    """How long one batch may run before its replica counts as hung: max(3 x the request
    timeout, the timeout + 30 s). Every caller of a batch that long has had its 504
    already, so its result is of no use; the margin keeps a short timeout (a 2 s one would
    give 6 s) from replacing a replica over a pause that ends by itself (a swapped-in
    process, a first-time kernel compile), since a replacement costs a model load."""
    return max(STUCK_FACTOR * request_timeout_s, request_timeout_s + STUCK_MARGIN_S)


class UnitReplica:
    """Runs the nodes of one unit; the ingress calls it once per frame.

    `stuck_after_s`: a batch running longer than this fails `check_health` (None: never)."""

    def __init__(self, plan: Plan, unit: Unit, stuck_after_s: float | None = None):
        self.plan, self.unit = plan, unit
        self.device, self.dtype = _device(unit)
        self.capability = plan.capability
        self.fatal: str | None = None
        self.stuck_after_s = stuck_after_s
        self.batch_started: float | None = None
        """`time.monotonic()` when the batch now in the worker thread started (None: idle)."""
        self.running_node: str | None = None
        """The node that batch is in; written by the worker thread, read by the event loop."""
        self._stuck_logged = False
        self.report: dict[str, dict[str, Any]] = {}
        started = time.perf_counter()
        log.info(
            "capgraph: unit '%s' started %.2fs after its process (worker start and imports)", unit.name, _process_age()
        )
        self.cores: CoreShare | None = None
        """This replica's claim on the machine's cores, for units that run torch (`serve.cluster.cores`)."""
        if any(plan.nodes[n].family.uses_gpu for n in unit.nodes):
            _set_threads(unit.threads)  # load and warm-up at the planner's share
            # on a GPU a replica's CPU work only feeds the GPU: it keeps to the planner's threads
            if sharing_on():
                self.cores = CoreShare(
                    machine_cores(), unit.num_cpus, cap=unit.threads if self.device.startswith("cuda") else None
                )
        self.memory_cap = _cap_gpu_memory(unit, self.device)
        self.nodes: dict[str, Node] = load_nodes(plan, unit.nodes, self.device, self.dtype, self.report, logger=log)
        self._log_loaded(time.perf_counter() - started)
        self.costs: dict[str, dict[int, float]] = {}
        """Milliseconds per batch by node and batch size, measured on real frames."""
        self.costs_saved = time.monotonic()
        self.batcher = Batcher(self._forward, unit.max_batch_size, unit.batch_wait_s)
        tags = {"capability": self.capability, "unit": unit.name}
        self.latency = Histogram(
            "capgraph_node_latency_ms",
            "Milliseconds a node took for one batch",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("capability", "unit", "node"),
        )
        self.batch_size = Histogram(
            "capgraph_node_batch_size",
            "Frames per batch a node ran",
            boundaries=BATCH_BUCKETS,
            tag_keys=("capability", "unit", "node"),
        )
        self.queue_length = Gauge(
            "capgraph_node_queue_length", "Frames waiting for the next batch", tag_keys=("capability", "unit")
        )
        self.failures = Counter(
            "capgraph_node_failed_frames", "Frames a node failed", tag_keys=("capability", "unit", "node")
        )
        for metric in (self.latency, self.batch_size, self.queue_length, self.failures):
            metric.set_default_tags(dict(tags))  # Ray adds its own tags to the dict it is given
        self.queue_length.set(0)
        self.respread = respread.Respread() if respread.enabled() else None
        self.moving: str | None = None
        """Why this replica is moving to another machine (`serve.cluster.respread`): it fails its health checks."""
        self.looking: asyncio.Task | None = None
        self.calls = 0
        """Frames the ingress sent this replica: a unit whose nodes a branch skips is not called."""
        self.node_cpu_ms = 0.0
        """CPU the batches took in the worker thread that runs them (the nodes' own, with
        torch's threads at 1): what benchmarks/live.py leaves out of the serving cost."""

    @property
    def queued(self) -> int:
        return len(self.batcher)

    def _log_loaded(self, seconds: float) -> None:
        for node_id, node in self.nodes.items():
            report = self.report[node_id]
            headroom = ""
            if self.memory_cap:
                headroom = (
                    f"; GPU cap {self.memory_cap / 2**30:.2f} GiB, "
                    f"{(self.memory_cap - _cuda_allocated()) / 2**30:.2f} GiB free"
                )
                report["gpu_cap_bytes"] = self.memory_cap
            log.info(
                "capgraph: node '%s' loaded %s bytes of weights (%.1f MiB) in %.2fs, warm-up %.2fs%s",
                node_id,
                f"{node.weight_bytes:,}",
                node.weight_bytes / 2**20,
                report["load_s"],
                report["warmup_s"],
                headroom,
            )
        log.info(
            "capgraph: unit '%s' ready in %.2fs (%d node%s, %d torch thread%s, batch %d, wait %.1f ms)",
            self.unit.name,
            seconds,
            len(self.nodes),
            "s" if len(self.nodes) != 1 else "",
            self.unit.threads,
            "s" if self.unit.threads != 1 else "",
            self.unit.max_batch_size,
            self.unit.batch_wait_s * 1000,
        )

    async def __call__(
        self,
        graph_inputs: Mapping[str, Any],
        params: Mapping[str, NodeParams],
        *upstream: Mapping[str, Any],
        alias: Alias | None = None,
        skipped: Sequence[str] = (),
        live: bool = False,
    ) -> dict[str, Any]:
        """One frame: the graph inputs this unit reads, its nodes' params as the front end
        resolved them (`check_params`), and the results of the units it reads from (resolved
        by Ray from their responses).
        `alias`: the frame is another graph's, named as that graph names it (a shared
        model, `serve.compile.sharing`); the answer goes back under the caller's names.
        `skipped`: the graph's nodes skipped for this frame (a branch): this unit's are not
        run, and the units that give them were not called (`upstream` lacks them).
        `live`: a live stream's frame, run ahead of queued batch frames (`Batcher.take`)."""
        self.calls += 1
        received = time.time()
        values = dict(graph_inputs)
        meta: dict[str, dict[str, float]] = {}
        trace: dict[str, dict[str, float]] = {}
        for result in upstream:
            if "error" in result:
                return result  # a frame that failed upstream stays failed
            values.update(result["values"])
            meta.update(result["meta"])
            trace.update(result.get("trace", {}))
        if alias is not None:
            return await self._for_caller(values, params, meta, alias, trace, received, live)
        own = {node_id: params[node_id] for node_id in self.unit.nodes}
        active = frozenset(self.plan.nodes).difference(skipped) if skipped else None
        return await self._submit(
            _Frame(values, own, time.perf_counter(), meta, active=active, trace=trace, received=received, live=live)
        )

    async def _submit(self, frame: _Frame) -> dict[str, Any]:
        self.queue_length.set(self.queued + 1)
        return await self.batcher.submit(frame)

    async def _for_caller(
        self,
        values: Mapping[str, Any],
        params: Mapping[str, NodeParams],
        meta: dict[str, Any],
        alias: Alias,
        trace: dict[str, dict[str, float]],
        received: float,
        live: bool = False,
    ) -> dict[str, Any]:
        (mine,) = self.unit.nodes  # a shared model's application runs one node
        frame = _Frame(
            {port: values[key] for port, key in alias.inputs if key in values},  # a skipped branch's value is absent
            {mine: params[alias.node]},
            time.perf_counter(),
            {},
            trace=trace,
            received=received,
            live=live,
        )
        result = await self._submit(frame)
        if "error" in result:
            return {"error": result["error"] | ({"node": alias.node} if result["error"].get("node") == mine else {})}
        return {
            "values": {f"{alias.node}.{key.split('.', 1)[1]}": value for key, value in result["values"].items()},
            "meta": meta | {alias.node: result["meta"][mine]},
            "trace": result["trace"],
        }

    async def _forward(self, frames: list[_Frame]) -> list[dict[str, Any]]:
        start, began = time.perf_counter(), time.time()
        self.queue_length.set(self.queued)
        self.batch_started, self._stuck_logged = time.monotonic(), False
        try:
            results = await asyncio.to_thread(self._run_isolated, frames)
        finally:
            self.batch_started = self.running_node = None
        done = time.time()
        for frame, result in zip(frames, results):
            if "meta" in result:
                ran = [n for n in self.unit.nodes if n in result["meta"]]
                if ran:
                    result["meta"][ran[0]]["queue_ms"] = round((start - frame.arrived) * 1000.0, 3)
                nodes_ms = sum(result["meta"][n]["ms"] for n in ran)
                result["meta"] = frame.meta | result["meta"]
                result["trace"] = frame.trace | {self.unit.name: unit_stamps(frame.received, began, done, nodes_ms)}
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
        cpu = time.thread_time()
        try:
            return self._run_nodes(frames)
        finally:
            self.node_cpu_ms += (time.thread_time() - cpu) * 1000.0

    def _run_nodes(self, frames: Sequence[_Frame]) -> list[dict[str, Any]]:
        values = [dict(f.values) for f in frames]
        meta: dict[str, dict[str, float]] = {}
        every = frozenset(self.plan.nodes)
        active = [f.active or every for f in frames] if any(f.active is not None for f in frames) else None

        def started(node_id: str) -> None:
            self.running_node = node_id

        def done(node_id: str, ms: float, batch: int) -> None:
            if batch == len(frames) and not self.plan.nodes[node_id].clip:  # one call for the whole batch: what
                self._note_cost(node_id, batch, ms)  # the planner's Cost means (over a clip, a batch is clip frames)
            self.latency.observe(ms, tags={"node": node_id})
            self.batch_size.observe(batch, tags={"node": node_id})
            meta[node_id] = {"ms": round(ms, 3), "batch": batch}

        with self.cores.batch() if self.cores else contextlib.nullcontext(0) as threads:
            if threads:
                _set_threads(threads, quiet=True)  # in this worker thread: OpenMP's thread count is per calling thread
            run_nodes(
                self.plan,
                self.nodes,
                self.unit.nodes,
                values,
                [f.params for f in frames],
                chunks=dict(self.unit.chunks),
                active=active,
                on_start=started,
                on_done=done,
            )
        if time.monotonic() - self.costs_saved > SAVE_COSTS_EVERY_S:
            self._save_costs()
        wanted = [str(s) for s in self.unit.exports]
        return [
            {
                "values": {k: frame[k] for k in wanted if k in frame},  # a skipped node's are absent
                "meta": {k: dict(v) for k, v in meta.items() if active is None or k in active[i]},
            }
            for i, frame in enumerate(values)
        ]

    def _note_cost(self, node_id: str, batch: int, ms: float) -> None:
        """A running average of each node's milliseconds per batch size (recent batches weigh most)."""
        sizes = self.costs.setdefault(node_id, {})
        sizes[batch] = ms if batch not in sizes else (1 - COST_SMOOTHING) * sizes[batch] + COST_SMOOTHING * ms

    def _save_costs(self) -> None:
        """Record the measured costs for the next plan of this graph on this machine; a
        folder that cannot be written costs nothing but the record."""
        self.costs_saved = time.monotonic()
        try:
            write_measured(self.plan, self.unit.name, self.device.split(":")[0], self.costs)
        except OSError as exc:
            log.debug("capgraph: could not record measured costs: %s", exc)

    async def _look_where_we_run(self) -> None:
        """Whether this replica must move to a machine that came back (`serve.cluster.respread`);
        the next health check then fails."""
        assert self.respread is not None
        try:
            self.moving = await asyncio.to_thread(self.respread.check)
        except Exception as exc:  # Ray's controller or GCS busy: look again at the next check
            log.debug("capgraph: could not check where '%s' runs: %s", self.unit.name, exc)
        if self.moving:
            log.warning("capgraph: %s", self.moving)

    def _error(self, exc: InputError | NodeFailed) -> dict[str, Any]:
        """A frame's failure as it crosses back to the ingress: `{"error": exc.to_dict()}`,
        which the units after this one pass on and the ingress raises again (`from_dict`)."""
        if isinstance(exc, NodeFailed):
            self.failures.inc(tags={"node": exc.node or self.unit.nodes[0]})
            if any(marker in exc.message for marker in FATAL_MARKERS):
                self.fatal = exc.message
            log.error("capgraph: %s", exc.message)
        return {"error": exc.to_dict()}

    def stuck(self) -> dict[str, Any] | None:
        """The running batch, when it has run past `stuck_after_s`: the node it is in, for
        how long, and the limit. None while no batch runs that long."""
        started, node_id = self.batch_started, self.running_node  # the worker thread may clear them meanwhile
        if started is None or self.stuck_after_s is None:
            return None
        running_s = time.monotonic() - started
        if running_s <= self.stuck_after_s:
            return None
        return {"node": node_id or self.unit.nodes[0], "running_s": round(running_s, 1), "limit_s": self.stuck_after_s}

    def state(self) -> dict[str, Any]:
        """What this replica reports to the ingress's /health: every node loaded and warm,
        and whether it is unusable (`fatal`: a device error; `stuck`: a hung batch)."""
        return {
            "unit": self.unit.name,
            "nodes": self.report,
            "queued": self.queued,
            "fatal": self.fatal,
            "stuck": self.stuck(),
            "moving": self.moving,
            "calls": self.calls,
            "taken": dict(self.batcher.taken),
            "node_cpu_ms": round(self.node_cpu_ms, 3),
            "pid": os.getpid(),
            "running": self.running(),
        }

    def running(self) -> dict[str, Any] | None:
        """The node the batch is in now, for how long, and its steps done where it says
        (`Node.progress`: a clip's denoising); None between batches."""
        started, node_id = self.batch_started, self.running_node  # the worker thread may clear them meanwhile
        if started is None or node_id is None:
            return None
        progress = self.nodes[node_id].progress if node_id in getattr(self, "nodes", {}) else None
        return {
            "node": node_id,
            "running_s": round(time.monotonic() - started, 1),
            "progress": list(progress) if progress else None,
        }

    async def check_health(self) -> None:
        """Called by Ray every `health_check_period_s`; raising makes Ray replace us (after
        3 failures in a row). A hung batch cannot be interrupted, only its process ended.
        A replica crowded on one machine while another has room moves (`serve.cluster.respread`)."""
        if self.moving:
            raise RuntimeError(self.moving)
        if self.respread is not None and self.respread.due() and (self.looking is None or self.looking.done()):
            # apart from the check: a slow controller must not time the health check out
            self.looking = asyncio.get_running_loop().create_task(self._look_where_we_run())
        if self.fatal:
            raise RuntimeError(f"unit '{self.unit.name}' hit an unrecoverable device error: {self.fatal}")
        stuck = self.stuck()
        if stuck:
            message = (
                f"unit '{self.unit.name}': node '{stuck['node']}' has run one batch for {stuck['running_s']:.1f} s, "
                f"past the {stuck['limit_s']:g} s limit; it is hung and this replica must be replaced"
            )
            if not self._stuck_logged:  # Ray logs every failed check; say it in our words once
                log.error("capgraph: %s", message)
                self._stuck_logged = True
            raise RuntimeError(message)


def _set_threads(threads: int, quiet: bool = False) -> None:
    """Torch's intra-op threads for the calling thread: the planner's CPU share at load
    (Ray would give a fractional CPU replica one thread through OMP_NUM_THREADS), then
    before each batch what `serve.cluster.cores` gives it."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if not quiet:
        log.info("capgraph: %d torch thread%s", threads, "s" if threads != 1 else "")


def _process_age() -> float:
    """Seconds since this process started (for the cold start's breakdown)."""
    import psutil

    return time.time() - psutil.Process().create_time()


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
        # Ray's GPUs are counts a machine advertises (`ray start --num-gpus`), not devices:
        # a replica given one torch cannot see runs on the CPU rather than failing.
        log.warning(
            "capgraph: deployment '%s' was given %g GPU by Ray but torch sees none on this machine "
            "(CUDA_VISIBLE_DEVICES=%s): running %s on the CPU in float32",
            unit.name,
            unit.num_gpus,
            os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
            ", ".join(unit.nodes),
        )
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
