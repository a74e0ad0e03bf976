"""The capability's HTTP front: a FastAPI ingress deployment that walks the compiled units.

It dispatches a frame to every unit at once (values go replica to replica through Ray's
object store) and awaits only the final units; `run` and `is_ready` are what other front
ends (mounts such as Livepeer) share with HTTP. The app's routes are `routes`', its health
`health`'s. What a gateway can count on is in docs/reliability.md and docs/serving.md.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from capgraph.engine.errors import NodeFailed, from_dict
from capgraph.engine.executor import check_inputs
from capgraph.engine.node import NodeParams
from capgraph.engine.values import MAX_PIXELS
from capgraph.serve.capability.errors import RETRY_AFTER_S, first_line
from capgraph.serve.capability.health import Health
from capgraph.serve.capability.routes import capability_app
from capgraph.serve.capability.trace import Trace
from capgraph.serve.capability.traffic import Traffic
from capgraph.serve.capability.wire import MAX_BODY_BYTES
from capgraph.serve.compile import Compiled


@dataclass(frozen=True)
class Settings:
    max_pixels: int = MAX_PIXELS
    max_body_bytes: int = MAX_BODY_BYTES
    request_timeout_s: float = 60.0
    mounts: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    """Each mount's graph-file section by name (`engine.mounts`), read where its routes are built."""
    max_in_flight: int | None = None
    """Graph requests one ingress replica runs at once; the next one gets 503 with
    `Retry-After` at once. None: three quarters of the replica's `max_ongoing_requests`
    (`max_concurrency`), which keeps the last quarter free for /health and for refusing."""
    health_check_period_s: float = 10.0
    """How often Ray checks the node replicas: `Health.watch` polls at least as often (5 s at
    most), so it sees a hung replica report itself before Ray replaces it."""


@serve.ingress()
class Capability:
    def __init__(self, compiled: Compiled, handles: dict[str, DeploymentHandle], settings: Settings):
        handles = dict(handles)
        for unit in compiled.units:  # a model shared with other graphs runs in an application of its own
            if unit.remote is not None:
                # `serve deploy` builds the applications of one config side by side: the shared model's
                # may not be there yet; /health says so until it is
                handles[unit.name] = serve.get_deployment_handle(
                    unit.remote.deployment, app_name=unit.remote.app, _check_exists=False
                )
        self.compiled, self.plan, self.handles, self.settings = compiled, compiled.plan, handles, settings
        self.in_flight = 0
        """Graph requests running in this replica (counted in the event loop: no lock)."""
        try:
            context = serve.get_replica_context()
            app_name = context.app_name
            max_ongoing = context._deployment_config.max_ongoing_requests  # no public accessor in Ray 2.60
        except Exception:  # outside a replica (tests that build the app only)
            app_name, max_ongoing = "default", None
        self.max_in_flight = settings.max_in_flight or (max(1, max_ongoing * 3 // 4) if max_ongoing else None)
        self.health = Health(compiled, handles, app_name, settings.health_check_period_s)
        self.traffic = Traffic()
        """The frames this replica ran of late, node by node: the console's live figures."""
        self.streams: Callable[[], list[dict[str, Any]]] | None = None
        """Each live stream's figures (frames, dropped, reused, ...), where a mount runs streams
        (Livepeer's): the console shows them."""

    # -- the shared entry points ------------------------------------------------------------

    async def run(
        self, inputs: Mapping[str, Any], params: Mapping[str, NodeParams]
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """One frame through the graph, with every node's params as `check_params` resolved
        them (`Plan.params_for`). Raises InputError on bad input,
        NodeFailed when the graph could not answer (a node failed: 500; a replica is gone
        or the capability is full: 503; past the request timeout: 504)."""
        with self.admitted():
            outputs, timings, _, _ = await self.execute(inputs, params)
        return outputs, timings

    async def run_live(
        self, inputs: Mapping[str, Any], params: Mapping[str, NodeParams]
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """`run` for a live stream's frame: every node replica runs it ahead of the batch
        frames queued there, which keep a share (`serve.replica.Batcher.take`)."""
        with self.admitted():
            outputs, timings, _, _ = await self.execute(inputs, params, live=True)
        return outputs, timings

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the `max_in_flight` slots for a graph request, or refuse it at once
        with a retryable 503: a queue without bound only turns overload into timeouts."""
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            raise NodeFailed(
                f"the capability is running {self.in_flight} requests, its limit; retry in {RETRY_AFTER_S} s "
                "or at another replica",
                status=503,
                retry_after=RETRY_AFTER_S,
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def is_ready(self) -> bool:
        ready, _ = await self.health.check()
        return ready

    async def execute(
        self,
        inputs: Mapping[str, Any],
        params: Mapping[str, NodeParams],
        timeout_s: float | None = None,
        trace: Trace | None = None,
        live: bool = False,
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, int], tuple[str, ...]]:
        """`run`, plus each node's batch size and the nodes skipped for this frame (their
        `when:` does not hold: not called, absent from the timings); `timeout_s` may
        shorten the configured timeout; `trace` gets the frame's timestamps."""
        timeout = min(timeout_s or self.settings.request_timeout_s, self.settings.request_timeout_s)
        start = time.perf_counter()
        checked = check_inputs(self.plan, inputs)
        skipped = self.plan.skipped(checked, params)
        if trace is not None:
            trace.dispatched = time.time()
        try:
            results = await self._dispatch(checked, params, timeout, skipped, live)
        except NodeFailed:
            self.traffic.failure(None)
            raise
        if trace is not None:
            trace.back = time.time()
            for result in results:
                trace.units.update(result.get("trace", {}))
        values: dict[str, Any] = {}
        meta: dict[str, dict[str, float]] = {}
        for result in results:
            if "error" in result:
                failed = from_dict(result["error"])
                if isinstance(failed, NodeFailed):
                    self.traffic.failure(failed.node)
                raise failed
            values.update(result["values"])
            meta.update(result["meta"])
        self.traffic.frame(meta, skipped)
        outputs = {  # an optional output whose node was skipped for this frame is left out
            name: checked[src.port] if src.node is None else values[str(src)]
            for name, src in self.plan.outputs.items()
            if src.node is None or str(src) in values
        }
        timings: dict[str, float] = {}
        for node_id in self.plan.nodes:
            if node_id in meta:
                timings[node_id] = meta[node_id]["ms"]
                if "queue_ms" in meta[node_id]:
                    timings[f"{node_id}.queue"] = meta[node_id]["queue_ms"]
                if self.plan.nodes[node_id].clip:  # over a clip: frames per call, as the in-process run says
                    timings[f"{node_id}.batch"] = float(meta[node_id]["batch"])
        timings["total"] = round((time.perf_counter() - start) * 1000.0, 3)
        batches = {node_id: int(m["batch"]) for node_id, m in meta.items()}
        return outputs, timings, batches, skipped

    async def _dispatch(
        self,
        checked: Mapping[str, Any],
        params: Mapping[str, NodeParams],
        timeout: float,
        skipped: tuple[str, ...],
        live: bool = False,
    ) -> list[dict[str, Any]]:
        """Send the frame to every unit at once, each with its nodes' entries of the request's
        resolved params; the results of the units nobody reads from. A unit whose nodes are
        all `skipped` is not called; the others hear which nodes are skipped."""
        responses: dict[str, DeploymentResponse] = {}
        called = [u for u in self.compiled.units if not set(u.nodes) <= set(skipped)]
        for unit in called:
            extra = {"alias": unit.remote.alias} if unit.remote else {"skipped": skipped} if skipped else {}
            if live:
                extra["live"] = True
            responses[unit.name] = self.handles[unit.name].remote(
                {name: checked[name] for name in unit.graph_inputs},
                {node_id: params[node_id] for node_id in unit.nodes},
                *(responses[u] for u in unit.upstream if u in responses),
                **extra,
            )
        if skipped:  # a branch: await the called units that no called unit reads, and those giving outputs
            read = {u for unit in called for u in unit.upstream}
            giving = {self.compiled.unit_of(s.node).name for s in self.plan.outputs.values() if s.node is not None}
            awaited = [responses[u.name] for u in called if u.name not in read or u.name in giving]
        else:
            awaited = [responses[name] for name in self.compiled.awaited]
        try:
            return await asyncio.wait_for(asyncio.gather(*awaited), timeout)
        except TimeoutError:
            _cancel(responses.values())
            raise NodeFailed(f"the graph did not answer within {timeout:g} s", status=504) from None
        except Exception as exc:  # a replica died or none is reachable: fail now, the caller retries
            _cancel(responses.values())
            raise NodeFailed(
                f"a node replica died or cannot be reached ({type(exc).__name__}: {first_line(exc)}); "
                f"retry in {RETRY_AFTER_S} s",
                status=503,
                retry_after=RETRY_AFTER_S,
            ) from exc

    # -- HTTP --------------------------------------------------------------------------------

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The app Ray Serve serves for this replica, built once it is constructed."""
        return capability_app(self)


def _cancel(responses: Any) -> None:
    """Cancel what is still queued; a response that already failed raises on cancel."""
    for response in responses:
        try:
            response.cancel()
        except Exception:  # finished or failed already: nothing left to cancel
            pass
