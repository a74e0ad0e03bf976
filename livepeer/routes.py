"""The Livepeer surface of a served graph, as one FastAPI router that `mount` adds to an
app (the Ray ingress's, or `livepeer.local`'s): `GET /ready`, the BYOC job route
`POST /{capability}`, the ai-runner routes and `/stream/*`, with the registrar in its
lifespan. docs/livepeer.md has each route's contract.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from capgraph.engine.codecs import encode_outputs
from capgraph.engine.errors import InputError
from capgraph.engine.plan import Plan
from capgraph.engine.values import MAX_PIXELS
from capgraph.livepeer.ai_runner import add_ai_runner_routes
from capgraph.livepeer.guard import LOADING, BearerAuth, Guard, ReadyFn, RunBatchFn, RunFn, failure
from capgraph.livepeer.settings import LivepeerSettings, load_settings
from capgraph.serve.capability import MAX_BODY_BYTES, RETRY_AFTER_S, read_job, render_json, request_schema

log = logging.getLogger("capgraph.livepeer")


def mount(
    app: FastAPI,
    plan: Plan,
    run: RunFn,
    is_ready: ReadyFn,
    settings: LivepeerSettings,
    *,
    run_batch: RunBatchFn | None = None,
    run_live: RunFn | None = None,
    max_pixels: int = MAX_PIXELS,
    max_body_bytes: int = MAX_BODY_BYTES,
    bearer_auth: bool = True,
    streams_to: Any = None,
) -> set[str]:
    """Add the Livepeer routes (`make_router`, same arguments) to `app`; with a token
    configured and `bearer_auth`, `BearerAuth` guards every route of the app but `/health`
    and `/ready` (without it, only the job and stream routes check the token, as
    `livepeer.local` has them). `streams_to` (the served capability) gets `streams`, the
    live streams' figures, for its console. Returns the routes' paths, for shaping their errors."""
    router = make_router(
        plan,
        run,
        is_ready,
        settings,
        run_batch=run_batch,
        run_live=run_live,
        max_pixels=max_pixels,
        max_body_bytes=max_body_bytes,
    )
    app.include_router(router)
    if streams_to is not None and router.live is not None:  # type: ignore[attr-defined]
        streams_to.streams = router.live.stats  # type: ignore[attr-defined]
    token = settings.token()
    if bearer_auth and token is not None:
        app.add_middleware(BearerAuth, token=token)
    return {r.path for r in router.routes if hasattr(r, "path")}


def make_router(
    plan: Plan,
    run: RunFn,
    is_ready: ReadyFn,
    settings: LivepeerSettings | None = None,
    *,
    run_batch: RunBatchFn | None = None,
    run_live: RunFn | None = None,
    max_pixels: int = MAX_PIXELS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> APIRouter:
    """The Livepeer routes for one graph. `settings` come from `load_settings(plan, section)`;
    None reads the environment only (`CAPGRAPH_LIVEPEER__...`). `run_batch`, where the
    backend has one (the in-process executor), lets live frames that arrive together run
    as one batch; `run_live`, where the backend has one (the served ingress), runs a live
    frame ahead of queued batch frames. `max_pixels` and `max_body_bytes` bound every job route's request, as
    they bound `/v1/{capability}`'s."""
    settings = settings if settings is not None else load_settings(plan)
    if settings.capability is None:  # built by hand rather than by load_settings
        settings = settings.model_copy(update={"capability": plan.capability})
    guard = Guard(settings, is_ready)
    live = None
    if settings.live is not None:
        try:
            from capgraph.livepeer.streams import LiveBridge  # pytrickle imports torch: only when live is on
        except ImportError as exc:
            raise RuntimeError(
                f"the graph's livepeer.live section needs pytrickle ({exc}); install capgraph[livepeer]"
            ) from exc

        live = LiveBridge(plan, run_live or run, is_ready, settings, run_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if settings.byoc is not None or settings.runner is not None:
                from capgraph.livepeer.registrar import Registrar

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
        return JSONResponse({"status": LOADING}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    async def job(request: Request) -> Response:
        refused = await guard.admit(request)
        if refused is not None:
            return refused
        try:
            inputs, params = await read_job(request, plan, max_pixels, max_body_bytes)
            outputs, timings = await run(inputs, params)
            answer = await asyncio.to_thread(
                lambda: render_json({"outputs": encode_outputs(plan, outputs, data_url=True), "timings_ms": timings})
            )
            return Response(answer, media_type="application/json")
        except InputError as exc:
            return failure(exc)
        except Exception as exc:  # 5xx: the gateway tries the next orchestrator
            log.exception("BYOC job on '%s' failed", settings.name)
            return failure(exc, f"{settings.name} pipeline error: {str(exc)[:300]}")
        finally:
            guard.gate.leave()

    if settings.routes:
        add_ai_runner_routes(
            router, plan, run, guard, settings, job, max_pixels=max_pixels, max_body_bytes=max_body_bytes
        )
    if settings.name not in settings.routes:
        body = {"required": True, "content": {"application/json": request_schema(plan)["application/json"]}}
        router.add_api_route(
            f"/{settings.name}",
            job,
            methods=["POST"],
            summary=f"BYOC job for capability '{settings.name}'",
            openapi_extra={"requestBody": body},
        )
    if live is not None:
        live.add_routes(router, guard)
    router.live = live  # type: ignore[attr-defined]  # `mount` hands its figures to the console
    return router
