"""The Livepeer surface of a served graph, as one FastAPI router the ingress includes.

    router = make_router(plan, run, is_ready, settings)
    app.include_router(router)

adds, beside the ingress's own `/v1/{capability}` and `/health`:

- `GET /ready`: exactly 200 once every node is warm, else 503. A static Live Runner's
  `health_url` and a container health check want this; `/health` answers 200 while loading.
- `POST /{capability}`: a BYOC job. go-livepeer forwards only Content-Type, Content-Length
  and `Authorization: Bearer <token>` (when a token was registered), and passes the body
  through verbatim, so the body is the native JSON job (see `serve.livepeer.codec`).
- the ai-runner routes the graph's `livepeer.routes` declares, plus `/version` and
  `/hardware/info` (see `serve.livepeer.ai_runner`);
- `/stream/start|params|stop|status` when `livepeer.live` is set (see `serve.livepeer.live`).

Every error is `{"detail": {"msg": ...}}`, the shape go-livepeer and the livepeer-ai SDK
read. Jobs beyond `capacity` get 503 busy at once: BYOC does not enforce capacity itself,
and a 5xx is what makes a gateway try the next orchestrator. The router's lifespan runs the
registrar (BYOC registration, Live Runner heartbeats) when the section configures one.
"""

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from engine.errors import InputError
from engine.plan import Plan
from serve.livepeer.codec import encode_outputs, parse_job
from serve.livepeer.settings import LivepeerSettings, load_settings

log = logging.getLogger("capgraph.livepeer")

RunFn = Callable[[dict[str, Any], dict[str, Any]], Awaitable[tuple[dict[str, Any], dict[str, float]]]]
"""One frame's graph inputs and `node.param` overrides -> (graph outputs, timings_ms)."""
RunBatchFn = Callable[[list[dict[str, Any]], dict[str, Any]], Awaitable[list[dict[str, Any]]]]
"""Frames sharing one set of overrides -> one dict of graph outputs per frame."""
ReadyFn = Callable[[], Awaitable[bool]]


def error(status: int, msg: str, **extra: Any) -> JSONResponse:
    """The one error shape: `{"detail": {"msg": ...}}` (FastAPI's `{"detail": "..."}` breaks the SDK)."""
    return JSONResponse({"detail": {"msg": msg, **extra}}, status_code=status)


BUSY = "busy"
LOADING = "loading"


class Gate:
    """Admits at most `capacity` jobs at once; the next one is refused, never queued.

    Counted in the event loop, so no lock is needed. One gate is shared by every job route
    of the router (BYOC and ai-runner), per ingress process."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_flight = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


class Guard:
    """Auth, readiness and capacity, checked in that order before any job runs."""

    def __init__(self, settings: LivepeerSettings, is_ready: ReadyFn):
        self.token = settings.token()
        self.is_ready = is_ready
        self.gate = Gate(settings.capacity)

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    async def admit(self, request: Request) -> JSONResponse | None:
        """None when the job may run (and then holds a slot: call `gate.leave()`), else the refusal."""
        if not self.authorized(request):
            return error(401, "Invalid bearer token.")
        if not await self.is_ready():
            return error(503, LOADING)
        if not self.gate.try_enter():
            return error(503, BUSY)
        return None


def make_router(plan: Plan, run: RunFn, is_ready: ReadyFn, settings: LivepeerSettings | None = None, *,
                run_batch: RunBatchFn | None = None) -> APIRouter:
    """The Livepeer routes for one graph. `settings` come from `load_settings(plan, section)`;
    None reads the environment only (`CAPGRAPH_LIVEPEER__...`). `run_batch`, where the
    backend has one (the in-process executor), lets live frames that arrive together run
    as one batch."""
    settings = settings if settings is not None else load_settings(plan)
    if settings.capability is None:  # built by hand rather than by load_settings
        settings = settings.model_copy(update={"capability": plan.capability})
    guard = Guard(settings, is_ready)
    live = None
    if settings.live is not None:
        try:
            from serve.livepeer.live import LiveBridge  # pytrickle imports torch: only when live is on
        except ImportError as exc:
            raise RuntimeError(f"the graph's livepeer.live section needs pytrickle ({exc}); install capgraph[livepeer]") from exc

        live = LiveBridge(plan, run, is_ready, settings, run_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if settings.byoc is not None or settings.runner is not None:
                from serve.livepeer.registrar import Registrar

                registrar = Registrar(settings, is_ready)
                await registrar.start()
                stack.push_async_callback(registrar.stop)
            if live is not None:
                await live.start()
                stack.push_async_callback(live.stop)
            yield

    router = APIRouter(lifespan=lifespan)

    @router.get("/ready", summary="200 only when every node is warm, else 503")
    async def ready() -> JSONResponse:
        if await is_ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": LOADING}, status_code=503)

    async def job(request: Request) -> Response:
        refused = await guard.admit(request)
        if refused is not None:
            return refused
        try:
            # Image decoding and PNG encoding run in a thread, off the event loop.
            inputs, params = await asyncio.to_thread(parse_job, await request.body(), plan)
            outputs, timings = await run(inputs, params)
            return JSONResponse({"outputs": await asyncio.to_thread(encode_outputs, plan, outputs), "timings_ms": timings})
        except InputError as exc:
            status = exc.status if 400 <= exc.status < 500 else 400
            return error(status, exc.message, field=exc.field)
        except TimeoutError as exc:
            return error(504, str(exc) or "timed out")
        except Exception as exc:  # 5xx: the gateway tries the next orchestrator
            log.exception("BYOC job on '%s' failed", settings.name)
            status = getattr(exc, "status", 500)
            return error(status if isinstance(status, int) and 500 <= status < 600 else 500, f"{settings.name} pipeline error: {str(exc)[:300]}")
        finally:
            guard.gate.leave()

    if settings.routes:
        from serve.livepeer.ai_runner import add_ai_runner_routes

        add_ai_runner_routes(router, plan, run, guard, settings, job)
    if settings.name not in settings.routes:
        router.add_api_route(f"/{settings.name}", job, methods=["POST"], summary=f"BYOC job for capability '{settings.name}'")
    if live is not None:
        live.add_routes(router, guard)
    return router
