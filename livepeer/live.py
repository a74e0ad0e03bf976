"""Live frames: a pytrickle `FrameProcessor` that runs each video frame through the graph.

Inside the ingress, `LiveBridge` forwards `/stream/*` to pytrickle's own `StreamServer` on a
loopback port; standalone, `stream_server()` is that server. Needs the `livepeer` extra.
docs/livepeer.md has the stream protocol, params updates and batching.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import numpy as np
import torch
from aiohttp import web
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pytrickle import FrameProcessor, StreamServer
from pytrickle.frames import AudioFrame, VideoFrame

from capgraph.engine.codecs import coerce
from capgraph.engine.errors import InputError
from capgraph.engine.node import NodeParams
from capgraph.engine.plan import Plan
from capgraph.engine.values import gray_to_rgb
from capgraph.livepeer.guard import Guard, ReadyFn, RunBatchFn, RunFn, error
from capgraph.livepeer.settings import LivepeerSettings, LiveSettings

log = logging.getLogger("capgraph.livepeer")

STREAM_KEYS = frozenset({"width", "height", "max_framerate", "detect_out_resolution", "show_loading"})
"""Stream params pytrickle itself reads; never graph params."""
LOADING_BODY = {
    "status": "error",
    "message": "Pipeline is still initializing. Please wait for IDLE status.",
    "current_state": "LOADING",
}


def frame_to_image(tensor: torch.Tensor) -> np.ndarray:
    """pytrickle's (1, H, W, C) float [0, 1] frame (or uint8, or (H, W, C)) -> uint8 (H, W, 3)."""
    t = tensor[0] if tensor.dim() == 4 else tensor
    if t.dtype != torch.uint8:
        t = (t.detach().float().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    image = t.cpu().numpy()
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def image_to_frame(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3), or a float map in [0, 1], -> (1, H, W, 3) float [0, 1] for pytrickle's encoder."""
    if image.ndim == 2:
        image = gray_to_rgb(image)
    return torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0).float().div_(255.0)


class _Batcher:
    """Runs frames submitted together as one batch (same params), up to `max_batch`."""

    def __init__(self, run_batch: RunBatchFn, max_batch: int):
        self.run_batch, self.max_batch = run_batch, max_batch
        self.pending: list[tuple[dict[str, Any], Mapping[str, NodeParams], asyncio.Future[dict[str, Any]]]] = []
        self.worker: asyncio.Task[None] | None = None
        self.sizes: deque[int] = deque(maxlen=256)

    async def submit(self, inputs: dict[str, Any], params: Mapping[str, NodeParams]) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending.append((inputs, params, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let frames that arrive in the same loop turn join
        while self.pending:
            params = self.pending[0][1]
            take = 0
            while take < min(len(self.pending), self.max_batch) and self.pending[take][1] is params:
                take += 1
            batch, self.pending = self.pending[:take], self.pending[take:]
            self.sizes.append(len(batch))
            try:
                outputs = await self.run_batch([b[0] for b in batch], params)
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), out in zip(batch, outputs):
                if not future.done():
                    future.set_result(out)


class GraphFrameProcessor(FrameProcessor):
    """Feeds each video frame through a graph; audio passes through untouched."""

    def __init__(
        self,
        plan: Plan,
        run: RunFn,
        is_ready: ReadyFn,
        live: LiveSettings,
        run_batch: RunBatchFn | None = None,
        ready_poll_s: float = 0.25,
    ):
        super().__init__()
        self.plan, self.run, self.is_ready, self.live = plan, run, is_ready, live
        self.ready_poll_s = ready_poll_s
        self.batcher = _Batcher(run_batch, live.max_batch) if run_batch is not None else None
        self.inputs: dict[str, Any] = {}
        """Graph inputs set by stream params (everything but the frame)."""
        self.overrides: dict[str, Any] = {}
        """`node.param` overrides set by stream params; replaced, never mutated."""
        self.params: Mapping[str, NodeParams] = plan.params_for(None)
        """Each node's params with `overrides` applied, resolved once per update, not per frame."""
        self.latency_ms: deque[float] = deque(maxlen=512)
        self.frames = 0
        self.failures = 0

    async def load_model(self, **kwargs: Any) -> None:
        """pytrickle calls this once at start-up: wait until every node is warm."""
        while not await self.is_ready():
            await asyncio.sleep(self.ready_poll_s)

    async def process_video_async(self, frame: VideoFrame) -> VideoFrame | None:
        missing = [
            n for n, s in self.plan.spec.inputs.items() if s.required and n != self.live.input and n not in self.inputs
        ]
        if missing:  # e.g. no prompt yet: show the input rather than stall the stream
            return frame
        start = time.perf_counter()
        inputs = {**self.inputs, self.live.input: frame_to_image(frame.tensor)}
        try:
            if self.batcher is not None:
                outputs = await self.batcher.submit(inputs, self.params)
            else:
                outputs, _ = await self.run(inputs, self.params)
        except Exception as exc:  # keep the stream flowing: gateways kill a stream after 30 s without output
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("live frame failed (%d so far), passing it through: %s", self.failures, exc)
            return frame
        self.frames += 1
        self.latency_ms.append((time.perf_counter() - start) * 1000.0)
        return frame.replace_tensor(image_to_frame(outputs[self.live.output]))

    async def process_audio_async(self, frame: AudioFrame) -> list[AudioFrame] | None:
        return [frame]

    async def update_params(self, params: dict[str, Any]) -> None:
        """Apply stream params that map to the graph; log and ignore the rest."""
        inputs: dict[str, Any] = {}
        overrides = dict(self.overrides)
        for name, value in (params or {}).items():
            target = self.live.params.get(name)
            if target is None:
                if name not in STREAM_KEYS:
                    log.debug("stream param '%s' maps to nothing in the graph; ignored", name)
                continue
            spec = self.plan.spec.inputs.get(target)
            if spec is None:
                overrides[target] = value
            else:
                inputs[target] = value
        try:
            node_params = self.plan.params_for(overrides)
            checked = {n: coerce(self.plan.spec.inputs[n].type, v, f"params.{n}") for n, v in inputs.items()}
        except InputError as exc:
            log.warning("stream params ignored: %s: %s", exc.field, exc.message)
            return
        self.inputs = {**self.inputs, **checked}
        self.overrides, self.params = overrides, node_params

    async def on_stream_start(self, params: dict[str, Any]) -> None:
        await self.update_params(params or {})

    def stats(self) -> dict[str, Any]:
        """Frames done and latency percentiles (ms) over the last 512 frames."""
        ms = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(1)
        return {
            "frames": self.frames,
            "failures": self.failures,
            "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)),
            "fps": 1000.0 / float(ms.mean()) if self.latency_ms else 0.0,
        }


def _auth_and_loading(token: str | None, is_ready: ReadyFn) -> Callable[..., Any]:
    """aiohttp middleware for the standalone server: bearer token, then 503 LOADING on start."""
    import hmac

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        guarded = request.path.startswith("/stream/") or request.path == "/live-video-to-video"
        if guarded and token is not None:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                return web.json_response({"detail": {"msg": "Invalid bearer token."}}, status=401)
        if request.path in ("/stream/start", "/live-video-to-video") and not await is_ready():
            return web.json_response(LOADING_BODY, status=503)
        return await handler(request)

    return middleware


def stream_server(
    plan: Plan,
    run: RunFn,
    is_ready: ReadyFn,
    settings: LivepeerSettings,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    run_batch: RunBatchFn | None = None,
    check_token: bool = True,
) -> StreamServer:
    """pytrickle's `StreamServer` for the graph, with `/ready`, the bearer check (token from
    `settings.token_env`) and 503 LOADING on start until warm."""
    if settings.live is None:
        raise ValueError("the graph's livepeer section has no 'live' settings (input and output)")
    processor = GraphFrameProcessor(plan, run, is_ready, settings.live, run_batch)
    token = settings.token() if check_token else None

    async def ready(request: web.Request) -> web.Response:
        if await is_ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "loading"}, status=503)

    return StreamServer(
        frame_processor=processor,
        host=host,
        port=port,
        pipeline="byoc",
        capability_name=settings.name,
        version=plan.spec.version,
        middleware=[_auth_and_loading(token, is_ready)],
        custom_routes=[{"method": "GET", "path": "/ready", "handler": ready}],
    )


class LiveBridge:
    """pytrickle's `StreamServer` on a loopback port, its `/stream/*` routes served by the ingress."""

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
        self.is_ready = is_ready
        # The ingress checks the token before forwarding; the loopback server needs none.
        self.server = stream_server(
            plan, run, is_ready, settings, host="127.0.0.1", port=0, run_batch=run_batch, check_token=False
        )
        self.processor: GraphFrameProcessor = self.server.frame_processor  # type: ignore[assignment]
        self._runner: web.AppRunner | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._runner = await self.server.start_server()
        host, port = self._runner.addresses[0][:2]
        self._client = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=60.0)

    async def stop(self) -> None:
        await self.server.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.aclose()

    def add_routes(self, router: APIRouter, guard: Guard) -> None:
        for path, method in self.ROUTES:
            router.add_api_route(path, self._forward(path, guard), methods=[method], summary=f"pytrickle {path}")

    def _forward(self, path: str, guard: Guard) -> Callable[[Request], Awaitable[Response]]:
        async def forward(request: Request) -> Response:
            if not guard.authorized(request):
                return error(401, "Invalid bearer token.")
            if path in ("/stream/start", "/live-video-to-video") and not await self.is_ready():
                return JSONResponse(LOADING_BODY, status_code=503)
            if self._client is None:  # the router's lifespan did not run
                return JSONResponse(LOADING_BODY, status_code=503)
            headers = {"Content-Type": request.headers.get("content-type", "application/json")}
            answer = await self._client.request(request.method, path, content=await request.body(), headers=headers)
            return Response(
                answer.content, status_code=answer.status_code, media_type=answer.headers.get("content-type")
            )

        forward.__name__ = "stream_" + path.strip("/").replace("/", "_").replace("-", "_")
        return forward
