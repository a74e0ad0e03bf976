"""The capability's HTTP front: a FastAPI ingress deployment that walks the compiled units.

Routes: `POST /v1/{capability}` (JSON or multipart), `GET /v1/{capability}/schema`,
`GET /health`, OpenAPI docs at `/docs`; plus the Livepeer routes where `serve.livepeer`
is installed. A request's frame is dispatched to every unit at once: each unit's call
gets the DeploymentResponses of the units it reads from, unawaited, so intermediate
values go from replica to replica through Ray's object store without passing through the
ingress; the ingress awaits only the units nobody reads from.

`run(inputs, params)` and `is_ready()` are the two entry points other front-ends (the
Livepeer routes) share with HTTP: decoded values in, numpy values and timings out.

What a gateway can count on (tests/reliability proves each):

- a caller's mistake is a 4xx JSON naming the field, found before any node runs; an
  unknown route or method too; nothing answers with a traceback;
- a replica that dies fails only the frames it held, at once, with a retryable 503;
- past `max_in_flight` graph requests the next one gets 503 with `Retry-After` at once,
  instead of queueing without bound;
- past `request_timeout_s` (or a caller's shorter `x-capgraph-timeout-s`) the answer is 504;
- with a bearer token configured (the Livepeer section's `token_env`), every route but
  `/health` and `/ready` needs it;
- a node that hangs is not left holding its replica: past `stuck_after_s` the replica
  fails Ray's health check and Ray replaces it; /health turns 503 naming the node, and its
  `replaced` object says which node's replica was replaced, why and when, for an hour
  after (`serve.incidents` keeps that record, one per ingress replica).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.exceptions import HTTPException

from engine.errors import InputError
from engine.executor import check_inputs
from engine.values import MAX_PIXELS
from serve import http
from serve.compiler import Compiled
from serve.incidents import RayStatus, Replacements, unusable
from serve.wire import MAX_BODY_BYTES, read_job

log = logging.getLogger("ray.serve")

READY = {"HEALTHY", "UPSCALING", "DOWNSCALING"}
"""Ray deployment statuses in which every replica the deployment wants is running."""
RETRY_AFTER_S = 1
"""What a retryable 503 (a replica died, the capability is full) tells the caller to wait."""


@dataclass(frozen=True)
class Settings:
    max_pixels: int = MAX_PIXELS
    max_body_bytes: int = MAX_BODY_BYTES
    request_timeout_s: float = 60.0
    livepeer: Mapping[str, Any] | None = None
    max_in_flight: int | None = None
    """Graph requests one ingress replica runs at once; the next one gets 503 with
    `Retry-After` at once. None: three quarters of the replica's `max_ongoing_requests`
    (`max_concurrency`), which keeps the last quarter free for /health and for refusing."""
    health_check_period_s: float = 10.0
    """How often Ray checks the node replicas: `watch` polls at least as often (5 s at
    most), so it sees a hung replica report itself before Ray replaces it."""


class NodeFault(RuntimeError):
    """A node failed on a frame (capgraph's own fault: HTTP 500), or none of its replicas
    could be reached or the capability is full (503, worth retrying)."""

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
        self._health_lock = asyncio.Lock()
        """One refresh at a time: the incident record must see Ray's statuses in order."""
        self.replacements = Replacements()
        """Node replicas hung, broken or replaced of late: /health's `replaced`."""
        self.in_flight = 0
        """Graph requests running in this replica (counted in the event loop: no lock)."""
        try:
            context = serve.get_replica_context()
            self.app_name = context.app_name
            max_ongoing = context._deployment_config.max_ongoing_requests  # no public accessor in Ray 2.60
        except Exception:  # outside a replica (tests that build the app only)
            self.app_name, max_ongoing = "default", None
        self.max_in_flight = settings.max_in_flight or (max(1, max_ongoing * 3 // 4) if max_ongoing else None)
        self.born_serving = any(ray.running for name, ray in self._ray_statuses().items() if name in handles)
        """Whether node replicas were already running when this ingress started: it is a new
        version rolling out over a serving one, so a node without a warm replica is updating."""

    # -- the shared entry points ------------------------------------------------------------

    async def run(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """One frame through the graph. Raises InputError on bad input, NodeFault when a
        node failed, TimeoutError past the request timeout."""
        with self.admitted():
            outputs, timings, _ = await self.execute(inputs, params)
        return outputs, timings

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the `max_in_flight` slots for a graph request, or refuse it at once
        with a retryable 503: a queue without bound only turns overload into timeouts."""
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            raise NodeFault(f"the capability is running {self.in_flight} requests, its limit; retry in {RETRY_AFTER_S} s "
                            "or at another replica", status=503)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

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
        results = await self._dispatch(checked, overrides, timeout)
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

    async def _dispatch(self, checked: Mapping[str, Any], overrides: Mapping[str, Any], timeout: float) -> list[dict[str, Any]]:
        """Send the frame to every unit at once; the results of the units nobody reads from."""
        responses: dict[str, DeploymentResponse] = {}
        for unit in self.compiled.units:
            mine = {k: v for k, v in overrides.items() if k in unit.nodes}
            responses[unit.name] = self.handles[unit.name].remote(
                {name: checked[name] for name in unit.graph_inputs}, mine, *(responses[u] for u in unit.upstream))
        awaited = [responses[name] for name in self.compiled.awaited]
        try:
            return await asyncio.wait_for(asyncio.gather(*awaited), timeout)
        except asyncio.TimeoutError:
            _cancel(responses.values())
            raise TimeoutError(f"the graph did not answer within {timeout:g} s") from None
        except Exception as exc:  # a replica died or none is reachable: fail now, the caller retries
            _cancel(responses.values())
            raise NodeFault(f"a node replica died or cannot be reached ({type(exc).__name__}: {_first_line(exc)}); "
                            f"retry in {RETRY_AFTER_S} s", status=503) from exc

    # -- health ----------------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every unit's replicas have loaded and warmed their nodes (they report
        it) and Ray has every replica it wants running. Cached for half a second. Notes
        replicas that are hung, broken or replaced on the way (`self.replacements`)."""
        async with self._health_lock:  # a caller that waited finds the cache fresh
            now = time.monotonic()
            if self._health_cache and now - self._health_cache[0] < 0.5:
                return self._health_cache[1], self._health_cache[2]
            return await self._refresh_health(now)

    async def _refresh_health(self, now: float) -> tuple[bool, dict[str, Any]]:
        """Ask Ray and every unit afresh (under `_health_lock`)."""
        statuses = await asyncio.to_thread(self._ray_statuses)
        reports = await asyncio.gather(*(self._state(u.name, statuses.get(u.name)) for u in self.compiled.units))
        nodes: dict[str, Any] = {}
        ready = True
        for unit, report in zip(self.compiled.units, reports):
            ray = statuses.get(unit.name)
            self.replacements.note(unit.name, unit.nodes, report, ray)
            status = ray.status if ray else None
            for node_id in unit.nodes:
                serving = _serving(report, node_id)
                nodes[node_id] = _node_state(report, node_id, status, serving, self.healthy_since is not None or self.born_serving)
                ready = ready and serving and nodes[node_id] in ("ok", "updating")
        self._health_cache = (now, ready, nodes)
        return ready, nodes

    async def _state(self, unit: str, ray_status: RayStatus | None) -> dict[str, Any] | None:
        if ray_status is not None and ray_status.running == 0:
            return None  # no replica running: asking would wait for one
        try:
            return await asyncio.wait_for(self.handles[unit].state.remote(), 2.0)
        except Exception:  # no running replica yet, or it died: Ray's status says which
            return None

    def _ray_statuses(self) -> dict[str, RayStatus]:
        """Ray's status of each deployment, how many of its replicas are running, and why."""
        try:
            app = serve.status().applications.get(self.app_name)
        except Exception:
            return {}
        return {name: RayStatus(_value(d.status), sum(n for s, n in d.replica_states.items() if _value(s) == "RUNNING"),
                                d.message or "")
                for name, d in (app.deployments if app else {}).items()}

    async def watch(self) -> None:
        """Log when the graph turns healthy, and every change after that. Polls every
        second while unhealthy, else every `health_check_period_s` (1 to 5 s): a hung
        replica reports itself for at least two of Ray's check periods before Ray replaces
        it, so the ingress sees which node it was even when no one asks /health."""
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
            await asyncio.sleep(1.0 if not ready else max(1.0, min(5.0, self.settings.health_check_period_s)))

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
        livepeer = livepeer_settings(self)

        @app.post(route, summary=f"Run {plan.capability} on one frame",
                  openapi_extra={"requestBody": {"required": True, "content": http.request_schema(plan)},
                                 "parameters": [{"name": TIMEOUT_HEADER, "in": "header", "required": False,
                                                 "description": "the caller's deadline in seconds; never extends request_timeout_s",
                                                 "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6}}]})
        async def infer(request: Request) -> JSONResponse:
            try:
                with self.admitted():  # before the body is read: refusing costs next to nothing
                    deadline = _timeout(request)
                    inputs, params = await read_job(request, plan, settings.max_pixels, settings.max_body_bytes)
                    outputs, timings, batches = await self.execute(inputs, params, deadline)
                    content = await asyncio.to_thread(http.render_outputs, plan, outputs, timings)
            except InputError as exc:
                return JSONResponse(http.error_body(exc), status_code=exc.status)
            except TimeoutError as exc:
                return JSONResponse({"error": {"msg": str(exc)}}, status_code=504)
            except NodeFault as exc:
                retry = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
                return JSONResponse({"error": {"node": exc.node, "msg": str(exc)}}, status_code=exc.status, headers=retry)
            headers = {"x-capgraph-batch-sizes": ",".join(f"{k}={v}" for k, v in batches.items())}
            return Response(content, media_type="application/json", headers=headers)

        @app.get(f"{route}/schema", summary="Inputs, request params and outputs of the capability")
        async def schema() -> dict[str, Any]:
            return http.schema(plan)

        @app.get("/health", summary="200 once every node is loaded and warm (or still serving while it updates), else 503")
        async def health() -> JSONResponse:
            ready, nodes = await self.health()
            updating = "updating" in nodes.values()
            replaced = self.replacements.recent()
            extra = {"replaced": replaced} if replaced else {}
            if ready:
                return JSONResponse({"status": "updating" if updating else "ok", "nodes": nodes} | extra)
            if updating:
                status = "updating"
            elif self.healthy_since is not None or {"unhealthy", "failed"} & set(nodes.values()):
                status = "unhealthy"
            else:
                status = "loading"
            return JSONResponse({"status": status, "nodes": nodes} | extra, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})

        livepeer_paths: set[str] = set()
        if livepeer is not None:
            from serve.livepeer.routes import BearerAuth, make_router

            router = make_router(plan, self.run, self.is_ready, livepeer, max_pixels=settings.max_pixels,
                                 max_body_bytes=settings.max_body_bytes)
            livepeer_paths = {r.path for r in router.routes if hasattr(r, "path")}
            app.include_router(router)
            token = livepeer.token()
            if token is not None:
                app.add_middleware(BearerAuth, token=token)
        _json_errors(app, livepeer_paths)
        return app


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


def _json_errors(app: FastAPI, livepeer_paths: set[str]) -> None:
    """Unknown routes, wrong methods and the unexpected answer JSON too: capgraph's
    `{"error": {"field", "msg"}}`, or `{"detail": {"msg", "field"}}` on a Livepeer route.
    Never a traceback: an unexpected exception is logged and answered in one line."""
    if livepeer_paths:
        from serve.livepeer.routes import route_path

    def answer(request: Request, status: int, field: str | None, msg: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        if livepeer_paths and route_path(request.scope) in livepeer_paths:
            body: dict[str, Any] = {"detail": {"msg": msg} | ({"field": field} if field else {})}
        else:
            body = {"error": ({"field": field} if field else {}) | {"msg": msg}}
        return JSONResponse(body, status_code=status, headers=dict(headers or {}))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return answer(request, 404, "path", f"no route {request.method} {request.url.path[:200]}; see /docs for the routes")
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return answer(request, 405, "method", f"{request.method} is not allowed here; use {allowed or 'another method'}",
                          exc.headers)
        field = "body" if exc.status_code in (400, 413, 415, 422) else None
        return answer(request, exc.status_code, field, str(exc.detail)[:300], exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("capgraph: %s %s failed: %s: %s", request.method, request.url.path[:200], type(exc).__name__, _first_line(exc))
        return answer(request, 500, None, "internal error; the capability logged it")


def _serving(report: Mapping[str, Any] | None, node_id: str) -> bool:
    """Whether a running replica says it has the node loaded and warm."""
    node = (report or {}).get("nodes", {}).get(node_id)
    return bool(node and node.get("loaded") and node.get("warm") and not unusable(report))


def _node_state(report: Mapping[str, Any] | None, node_id: str, ray_status: str | None, serving: bool, was_healthy: bool) -> str:
    """ok, updating, loading, unhealthy or failed, from what the replica says and what Ray
    says. `updating`: Ray is rolling out a new version; the node still serves as long as
    one replica of either version is warm."""
    if ray_status == "DEPLOY_FAILED":
        return "failed"
    if ray_status == "UNHEALTHY" or unusable(report):
        return "unhealthy"
    if ray_status == "UPDATING" and (serving or was_healthy):
        return "updating"
    if not serving:
        return "loading" if ray_status in (None, "UPDATING") else "unhealthy"
    if ray_status is not None and ray_status not in READY:
        return "loading"
    return "ok"


def _value(enum: Any) -> str:
    return str(getattr(enum, "value", enum))


def _cancel(responses: Any) -> None:
    """Cancel what is still queued; a response that already failed raises on cancel."""
    for response in responses:
        try:
            response.cancel()
        except Exception:  # finished or failed already: nothing left to cancel
            pass


def _first_line(exc: BaseException) -> str:
    """One line of an exception for an answer: Ray's messages can carry a remote traceback."""
    return (str(exc).strip().splitlines() or [""])[0][:200]


def livepeer_settings(capability: Capability) -> Any:
    """The Livepeer section's settings (bearer token, routes), or None where `serve.livepeer`
    is not installed. Read here, in the ingress replica, so secrets given as environment
    variables stay on the cluster."""
    try:
        from serve.livepeer.settings import load_settings
    except ImportError:
        return None
    return load_settings(capability.plan, capability.settings.livepeer)
