"""The capability's HTTP front: a FastAPI ingress deployment that walks the compiled units.

Routes: `POST /v1/{capability}` (JSON or multipart), `GET /v1/{capability}/schema`,
`GET /health`, OpenAPI docs at `/docs`; plus the Livepeer routes where `serve.livepeer`
is installed. A request's frame is dispatched to every unit at once: each unit's call
gets the DeploymentResponses of the units it reads from, unawaited, so intermediate
values go from replica to replica through Ray's object store without passing through the
ingress; the ingress awaits only the units nobody reads from.

`run(inputs, params)` and `is_ready()` are the two entry points other front-ends (the
Livepeer routes) share with HTTP: decoded values in, numpy values and timings out.
"""

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from engine.errors import InputError
from engine.executor import check_inputs
from engine.values import MAX_PIXELS
from serve import http
from serve.compiler import Compiled

log = logging.getLogger("ray.serve")

READY = {"HEALTHY", "UPSCALING", "DOWNSCALING"}
"""Ray deployment statuses in which every replica the deployment wants is running."""


@dataclass(frozen=True)
class Settings:
    max_pixels: int = MAX_PIXELS
    max_body_bytes: int = 64 << 20
    request_timeout_s: float = 60.0
    livepeer: Mapping[str, Any] | None = None


class NodeFault(RuntimeError):
    """A node failed on a frame (capgraph's own fault: HTTP 500), or none of its replicas
    could be reached (503)."""

    def __init__(self, message: str, node: str | None = None, status: int = 500):
        super().__init__(message)
        self.node, self.status = node, status


@serve.ingress()
class Capability:
    def __init__(self, compiled: Compiled, handles: dict[str, DeploymentHandle], settings: Settings):
        self.compiled, self.plan, self.handles, self.settings = compiled, compiled.plan, handles, settings
        self.started = time.monotonic()
        self.healthy_since: float | None = None
        self._health_cache: tuple[float, bool, dict[str, Any]] | None = None
        try:
            self.app_name = serve.get_replica_context().app_name
        except Exception:  # outside a replica (tests that build the app only)
            self.app_name = "default"

    # -- the shared entry points ------------------------------------------------------------

    async def run(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """One frame through the graph. Raises InputError on bad input, NodeFault when a
        node failed, TimeoutError past the request timeout."""
        outputs, timings, _ = await self.execute(inputs, params)
        return outputs, timings

    async def is_ready(self) -> bool:
        ready, _ = await self.health()
        return ready

    async def execute(self, inputs: Mapping[str, Any], params: Mapping[str, Any],
                      timeout_s: float | None = None) -> tuple[dict[str, Any], dict[str, float], dict[str, int]]:
        """`run`, plus each node's batch size; `timeout_s` may shorten the configured timeout."""
        timeout = min(timeout_s or self.settings.request_timeout_s, self.settings.request_timeout_s)
        start = time.perf_counter()
        checked = check_inputs(self.plan, inputs)
        resolved = self.plan.params_for(params)
        overrides = {k: v for k, v in resolved.items() if v is not self.plan.nodes[k].params}
        responses = {}
        for unit in self.compiled.units:
            mine = {k: v for k, v in overrides.items() if k in unit.nodes}
            responses[unit.name] = self.handles[unit.name].remote(
                {name: checked[name] for name in unit.graph_inputs}, mine, *(responses[u] for u in unit.upstream))
        awaited = [responses[name] for name in self.compiled.awaited]
        try:
            results = await asyncio.wait_for(asyncio.gather(*awaited), timeout)
        except asyncio.TimeoutError:
            for response in responses.values():
                response.cancel()
            raise TimeoutError(f"the graph did not answer within {timeout:g} s") from None
        except Exception as exc:  # a replica died or none is reachable
            for response in responses.values():
                response.cancel()
            raise NodeFault(f"a node deployment is unavailable: {type(exc).__name__}: {str(exc)[:300]}", status=503) from exc
        values: dict[str, Any] = {}
        meta: dict[str, dict[str, float]] = {}
        for result in results:
            if "error" in result:
                error = result["error"]
                if error.get("field"):
                    raise InputError(error["field"], error["msg"], error.get("status", 422))
                raise NodeFault(error["msg"], error.get("node"), error.get("status", 500))
            values.update(result["values"])
            meta.update(result["meta"])
        outputs = {name: checked[src.port] if src.node is None else values[str(src)] for name, src in self.plan.outputs.items()}
        timings: dict[str, float] = {}
        for node_id in self.plan.nodes:
            if node_id in meta:
                timings[node_id] = meta[node_id]["ms"]
                if "queue_ms" in meta[node_id]:
                    timings[f"{node_id}.queue"] = meta[node_id]["queue_ms"]
        timings["total"] = round((time.perf_counter() - start) * 1000.0, 3)
        batches = {node_id: int(m["batch"]) for node_id, m in meta.items()}
        return outputs, timings, batches

    # -- health ----------------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every unit's replicas have loaded and warmed their nodes (they report
        it) and Ray has every replica it wants running. Cached for half a second."""
        now = time.monotonic()
        if self._health_cache and now - self._health_cache[0] < 0.5:
            return self._health_cache[1], self._health_cache[2]
        statuses = await asyncio.to_thread(self._ray_statuses)
        reports = await asyncio.gather(*(self._state(u.name, statuses.get(u.name)) for u in self.compiled.units))
        nodes: dict[str, Any] = {}
        for unit, report in zip(self.compiled.units, reports):
            status = statuses.get(unit.name, (None, 0))[0]
            for node_id in unit.nodes:
                nodes[node_id] = _node_state(report, node_id, status)
        ready = all(state == "ok" for state in nodes.values())
        self._health_cache = (now, ready, nodes)
        return ready, nodes

    async def _state(self, unit: str, ray_status: tuple[str, int] | None) -> dict[str, Any] | None:
        if ray_status is not None and ray_status[1] == 0:
            return None  # no replica running: asking would wait for one
        try:
            return await asyncio.wait_for(self.handles[unit].state.remote(), 2.0)
        except Exception:  # no running replica yet, or it died: Ray's status says which
            return None

    def _ray_statuses(self) -> dict[str, tuple[str, int]]:
        """Ray's status of each deployment and how many of its replicas are running."""
        try:
            app = serve.status().applications.get(self.app_name)
        except Exception:
            return {}
        return {name: (_value(d.status), sum(n for s, n in d.replica_states.items() if _value(s) == "RUNNING"))
                for name, d in (app.deployments if app else {}).items()}

    async def watch(self) -> None:
        """Log when the graph turns healthy, and every change after that."""
        was: bool | None = None
        while True:
            ready, nodes = await self.health()
            if ready != was:
                took = time.monotonic() - self.started
                if ready:
                    self.healthy_since = self.healthy_since or took
                    log.info("capgraph: capability '%s' is healthy (%d nodes loaded and warm) %.1fs after the ingress started",
                             self.plan.capability, len(nodes), took)
                elif was is not None:
                    log.warning("capgraph: capability '%s' is no longer healthy: %s", self.plan.capability, nodes)
                was = ready
            await asyncio.sleep(1.0 if not ready else 5.0)

    # -- HTTP --------------------------------------------------------------------------------

    def __serve_build_asgi_app__(self) -> FastAPI:
        plan, settings = self.plan, self.settings
        watcher: list[asyncio.Task] = []

        async def lifespan(_: FastAPI):
            watcher.append(asyncio.get_running_loop().create_task(self.watch()))
            yield
            watcher[0].cancel()

        app = FastAPI(title=plan.capability, version=plan.spec.version, description=plan.spec.description or plan.capability,
                      lifespan=lifespan)
        route = f"/v1/{plan.capability}"

        @app.post(route, summary=f"Run {plan.capability} on one frame",
                  openapi_extra={"requestBody": {"content": {"application/json": {"schema": {"type": "object"}},
                                                             "multipart/form-data": {"schema": {"type": "object"}}}}})
        async def infer(request: Request) -> JSONResponse:
            try:
                inputs, params = await self._parse(request)
                outputs, timings, batches = await self.execute(inputs, params, _timeout(request))
                body = {"outputs": await asyncio.to_thread(http.encode_outputs, plan, outputs), "timings_ms": timings}
            except InputError as exc:
                return JSONResponse(http.error_body(exc), status_code=exc.status)
            except TimeoutError as exc:
                return JSONResponse({"error": {"msg": str(exc)}}, status_code=504)
            except NodeFault as exc:
                return JSONResponse({"error": {"node": exc.node, "msg": str(exc)}}, status_code=exc.status)
            headers = {"x-capgraph-batch-sizes": ",".join(f"{k}={v}" for k, v in batches.items())}
            return JSONResponse(body, headers=headers)

        @app.get(f"{route}/schema", summary="Inputs, request params and outputs of the capability")
        async def schema() -> dict[str, Any]:
            return http.schema(plan)

        @app.get("/health", summary="200 once every node is loaded and warm, 503 before and when a node is down")
        async def health() -> JSONResponse:
            ready, nodes = await self.health()
            if ready:
                return JSONResponse({"status": "ok", "nodes": nodes})
            status = "unhealthy" if self.healthy_since is not None or "unhealthy" in nodes.values() else "loading"
            return JSONResponse({"status": status, "nodes": nodes}, status_code=503)

        router = livepeer_router(self)
        if router is not None:
            app.include_router(router)
        return app

    async def _parse(self, request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > self.settings.max_body_bytes:
            raise InputError("body", f"request of {int(size):,} bytes is over the limit of {self.settings.max_body_bytes:,}", 413)
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            fields = {}
            for name, value in form.multi_items():
                fields[name] = await value.read() if hasattr(value, "read") else value
            return await asyncio.to_thread(http.parse_form, self.plan, fields, self.settings.max_pixels)
        raw = await request.body()
        if len(raw) > self.settings.max_body_bytes:
            raise InputError("body", f"request of {len(raw):,} bytes is over the limit of {self.settings.max_body_bytes:,}", 413)
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise InputError("body", f"not valid JSON ({exc})", 400) from None
        return await asyncio.to_thread(http.parse_json, self.plan, body, self.settings.max_pixels)


TIMEOUT_HEADER = "x-capgraph-timeout-s"
"""A caller's own deadline in seconds (a gateway's remaining budget); never longer than
the configured `request_timeout_s`."""


def _timeout(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
    try:
        seconds = float(value) if value else None
    except ValueError:
        raise InputError(f"headers.{TIMEOUT_HEADER}", f"'{value[:20]}' is not a number of seconds", 400) from None
    if seconds is not None and not 0 < seconds < 1e6:
        raise InputError(f"headers.{TIMEOUT_HEADER}", "must be a positive number of seconds", 400)
    return seconds


def _node_state(report: Mapping[str, Any] | None, node_id: str, ray_status: str | None) -> str:
    """ok, loading, unhealthy or failed, from what the replica says and what Ray says."""
    if ray_status == "DEPLOY_FAILED":
        return "failed"
    if ray_status == "UNHEALTHY" or (report and report.get("fatal")):
        return "unhealthy"
    node = (report or {}).get("nodes", {}).get(node_id)
    if not node or not (node.get("loaded") and node.get("warm")):
        return "loading" if ray_status in (None, "UPDATING") else "unhealthy"
    if ray_status is not None and ray_status not in READY:
        return "loading"
    return "ok"


def _value(enum: Any) -> str:
    return str(getattr(enum, "value", enum))


def livepeer_router(capability: Capability) -> Any:
    """Hook for the Livepeer routes: `serve.livepeer.routes.make_router(plan, run, is_ready,
    settings)` when that package is installed, else None. Settings are read here, in the
    ingress replica, so secrets given as environment variables stay on the cluster."""
    try:
        from serve.livepeer.routes import make_router
        from serve.livepeer.settings import load_settings
    except ImportError:
        return None
    settings = load_settings(capability.plan, capability.settings.livepeer)
    return make_router(capability.plan, capability.run, capability.is_ready, settings)
