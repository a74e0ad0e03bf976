"""Live streams behind the ingress: pytrickle's `StreamServer` holds one stream, so the
bridge runs one per concurrent stream on loopback ports (up to `live.max_streams`) and
serves their `/stream/*` routes. Every stream's frames share one batcher (in process) or
meet in the node replicas' batches (served), so frames of concurrent streams run together.
A request names its stream by `X-Stream-Id` (go-livepeer sends it) or, on start, by the
body's `gateway_request_id`; without either it goes to the stream started last.
docs/livepeer.md ("Live streams").
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pytrickle import StreamServer

from capgraph.engine.plan import Plan
from capgraph.livepeer.guard import BUSY, Guard, ReadyFn, RunBatchFn, RunFn, error, retry_later
from capgraph.livepeer.live import LOADING_BODY, FrameBatcher, GraphFrameProcessor, stream_server
from capgraph.livepeer.settings import LivepeerSettings

log = logging.getLogger("capgraph.livepeer")

STARTS = ("/stream/start", "/live-video-to-video")
THREADS_PER_STREAM, SPARE_THREADS = 2, 16
"""The loop's default thread pool: pytrickle's decoder holds one a stream, the rest run frames."""


@dataclass
class _Slot:
    """One pytrickle server on a loopback port and the stream it carries now (None: idle)."""

    server: StreamServer
    runner: web.AppRunner
    url: str
    stream_id: str | None = None

    @property
    def processor(self) -> GraphFrameProcessor:
        return self.server.frame_processor  # type: ignore[return-value]

    @property
    def busy(self) -> bool:
        """A stream runs here, or is starting (pytrickle 0.1.6's task for the stream's client
        runs from the start request until the stream ends)."""
        task = getattr(self.server, "_client_task", None)
        return task is not None and not task.done()


class LiveBridge:
    """pytrickle's `StreamServer`s, one per concurrent stream, their routes served by the ingress."""

    ROUTES = (
        ("/stream/start", "POST"),
        ("/stream/params", "POST"),
        ("/stream/stop", "POST"),
        ("/stream/status", "GET"),
        ("/live-video-to-video", "POST"),
    )

    def __init__(
        self, plan: Plan, run: RunFn, is_ready: ReadyFn, settings: LivepeerSettings, run_batch: RunBatchFn | None = None
    ):
        assert settings.live is not None
        self.plan, self.run, self.is_ready, self.settings = plan, run, is_ready, settings
        self.max_streams = settings.live.max_streams
        self.batcher = FrameBatcher(run_batch, settings.live.max_batch) if run_batch is not None else None
        self.slots: list[_Slot] = []
        self.latest: _Slot | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def processor(self) -> GraphFrameProcessor:
        """The processor of the stream started last (the first server's before any)."""
        return (self.latest or self.slots[0]).processor

    async def start(self) -> None:
        # pytrickle holds a thread of the loop's default executor for each stream's decoder
        # for as long as the stream runs; the default pool (CPUs + 4 threads) would leave
        # none for the frames themselves (`asyncio.to_thread`) past a few streams
        threads = THREADS_PER_STREAM * self.max_streams + SPARE_THREADS
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(threads, thread_name_prefix="capgraph-live"))
        self._client = httpx.AsyncClient(timeout=60.0)
        await self._open_slot()  # one server from the start: /stream/status answers before any stream

    async def stop(self) -> None:
        for slot in self.slots:
            await slot.server.stop()
            await slot.runner.cleanup()
        if self._client is not None:
            await self._client.aclose()

    async def _open_slot(self) -> _Slot:
        # The ingress checks the token before forwarding; the loopback servers need none.
        server = stream_server(
            self.plan,
            self.run,
            self.is_ready,
            self.settings,
            host="127.0.0.1",
            port=0,
            check_token=False,
            batcher=self.batcher,
        )
        runner = await server.start_server()
        host, port = runner.addresses[0][:2]
        slot = _Slot(server, runner, f"http://{host}:{port}")
        self.slots.append(slot)
        return slot

    async def _slot_for_start(self, stream_id: str | None) -> _Slot | None:
        """The stream's own server (a restart), an idle one, or a new one; None when full."""
        for slot in self.slots:
            if stream_id is not None and slot.stream_id == stream_id:
                return slot
        for slot in self.slots:
            if not slot.busy:
                return slot
        if len(self.slots) < self.max_streams:
            return await self._open_slot()
        return None

    def _slot_named(self, request: Request) -> _Slot:
        stream_id = request.headers.get("x-stream-id")
        for slot in self.slots:
            if stream_id is not None and slot.stream_id == stream_id:
                return slot
        return self.latest or self.slots[0]

    def batch_mean(self) -> float | None:
        """Frames per batch the shared batcher ran of late, across streams (None: no batcher
        here, as served, where the node replicas batch and the console shows it)."""
        sizes = list(self.batcher.sizes) if self.batcher is not None else []
        return round(sum(sizes) / len(sizes), 2) if sizes else None

    def stats(self) -> list[dict[str, Any]]:
        """Each stream's figures (`GraphFrameProcessor.stats`) with its id, busy or not."""
        return [
            {"stream_id": slot.stream_id, "active": slot.busy, **slot.processor.stats()}
            for slot in self.slots
            if slot.stream_id is not None
        ]

    def add_routes(self, router: APIRouter, guard: Guard) -> None:
        for path, method in self.ROUTES:
            router.add_api_route(path, self._forward(path, guard), methods=[method], summary=f"pytrickle {path}")

    def _forward(self, path: str, guard: Guard) -> Callable[[Request], Awaitable[Response]]:
        async def forward(request: Request) -> Response:
            if not guard.authorized(request):
                return error(401, "Invalid bearer token.")
            if path in STARTS and not await self.is_ready():
                return JSONResponse(LOADING_BODY, status_code=503)
            if self._client is None or not self.slots:  # the router's lifespan did not run
                return JSONResponse(LOADING_BODY, status_code=503)
            body = await request.body()
            if path in STARTS:
                stream_id = _start_id(body) or request.headers.get("x-stream-id")
                slot = await self._slot_for_start(stream_id)
                if slot is None:
                    return retry_later(f"{BUSY}: {self.max_streams} streams running")
            else:
                slot = self._slot_named(request)
            headers = {"Content-Type": request.headers.get("content-type", "application/json")}
            answer = await self._client.request(request.method, slot.url + path, content=body, headers=headers)
            content = answer.content
            if path in STARTS and answer.status_code == 200:
                slot.stream_id = stream_id
                self.latest = slot
            elif path == "/stream/status" and answer.status_code == 200:
                live = slot.processor.stats() | {"batch_mean": self.batch_mean()}
                content = json.dumps(answer.json() | {"stream_id": slot.stream_id, "live": live})
            return Response(content, status_code=answer.status_code, media_type=answer.headers.get("content-type"))

        forward.__name__ = "stream_" + path.strip("/").replace("/", "_").replace("-", "_")
        return forward


def _start_id(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("gateway_request_id")
    except (ValueError, AttributeError):
        return None
    return str(value) if value is not None else None
