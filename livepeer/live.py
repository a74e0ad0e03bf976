"""Live frames: a pytrickle `FrameProcessor` that runs each video frame through the graph.

Standalone, `stream_server()` is pytrickle's own `StreamServer` for the graph; inside the
ingress, `livepeer.streams.LiveBridge` runs one per concurrent stream on loopback ports.
Needs the `livepeer` extra.
docs/livepeer.md has the stream protocol, params updates and batching.
"""

import asyncio
import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from aiohttp import web
from pytrickle import FrameProcessor, StreamServer
from pytrickle.frames import AudioFrame, VideoFrame, VideoOutput

from capgraph.engine.codecs import coerce
from capgraph.engine.errors import InputError
from capgraph.engine.node import NodeParams
from capgraph.engine.plan import Plan
from capgraph.engine.values import gray_to_rgb
from capgraph.livepeer.guard import ReadyFn, RunBatchFn, RunFn
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
    image = t.detach().cpu().numpy()
    if image.dtype != np.uint8:
        # in numpy, in place on one new array: a fifth of a millisecond at 512x512 where the
        # torch expression (clamp, scale, round, cast: four full-size temporaries) took 5
        scaled = image * np.float32(255.0)  # a new array: pytrickle's frame is never written
        scaled += np.float32(0.5)
        np.clip(scaled, 0.0, 255.0, out=scaled)
        image = scaled.astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def image_to_frame(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3), or a float map in [0, 1], -> (1, H, W, 3) float [0, 1] for pytrickle's encoder."""
    if image.ndim == 2:
        image = gray_to_rgb(image)
    return torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0).float().div_(255.0)


class NewestFrame:
    """Takes the place of pytrickle's frame skipper in a stream's client: the newest decoded
    frame wins, older ones still queued are dropped and counted. pytrickle's own skipper
    lets 15 frames queue first, so a graph slower than the stream falls further behind
    with every frame; this one keeps the delay to the frame being processed."""

    def __init__(self) -> None:
        self.dropped = 0

    async def process_video_queue(self, queue: "asyncio.Queue[VideoFrame | None]", timeout: float = 5.0) -> Any:
        frame = await asyncio.wait_for(queue.get(), timeout)
        while frame is not None and not queue.empty():
            newer = queue.get_nowait()
            if newer is None:  # the stream ends: the frame it held back goes with it
                return None
            self.dropped += 1
            frame = newer
        return frame

    def reset(self) -> None:
        """pytrickle calls this when a stream ends; the counts stay for the status."""

    def set_target_fps(self, target_fps: float | None) -> None:
        """pytrickle's skipper API; the newest frame needs no target."""


class FrameBatcher:
    """Runs the frames of every stream waiting together as one batch, oldest first, up to
    `max_batch`, each frame with its own stream's params. With the newest frame winning,
    a stream has at most one frame waiting, so a batch takes one frame from each stream
    in turn: none starves another."""

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
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
            self.sizes.append(len(batch))
            try:
                outputs = await self.run_batch([b[0] for b in batch], [b[1] for b in batch])
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), out in zip(batch, outputs):
                if not future.done():
                    future.set_result(out)


MAX_OUTPUT_WAITING = 4
"""Answered frames that may wait for the stream's encoder; older ones are dropped (counted):
an encoder slower than the stream must not queue either."""
SIMILAR_STRIDE = 8
"""Every 8th pixel each way is what the similar-frame check compares (1/64 of the frame)."""
MAX_REUSED = 30
"""After this many reused outputs in a row a frame runs anyway, so a still scene still
shows a changed prompt within a second at 30 fps."""


class GraphFrameProcessor(FrameProcessor):
    """Feeds each video frame of one stream through a graph; audio passes through untouched.

    `batcher`: one shared by every stream of the ingress, so their frames batch together
    (else `run_batch` gives this stream its own; else each frame runs alone through `run`)."""

    def __init__(
        self,
        plan: Plan,
        run: RunFn,
        is_ready: ReadyFn,
        live: LiveSettings,
        run_batch: RunBatchFn | None = None,
        ready_poll_s: float = 0.25,
        batcher: FrameBatcher | None = None,
    ):
        super().__init__()
        self.plan, self.run, self.is_ready, self.live = plan, run, is_ready, live
        self.ready_poll_s = ready_poll_s
        self.batcher = batcher or (FrameBatcher(run_batch, live.max_batch) if run_batch is not None else None)
        self.server: StreamServer | None = None
        """The server whose client feeds this processor: its frame skipper is replaced at stream start."""
        self.skipper = NewestFrame()
        self.skip_similar = live.skip_similar
        self.inputs: dict[str, Any] = {}
        """Graph inputs set by stream params (everything but the frame)."""
        self.overrides: dict[str, Any] = {}
        """`node.param` overrides set by stream params; replaced, never mutated."""
        self.params: Mapping[str, NodeParams] = plan.params_for(None)
        """Each node's params with `overrides` applied, resolved once per update, not per frame."""
        self.latency_ms: deque[float] = deque(maxlen=512)
        """Milliseconds each frame took here, from the processor's call to its answer."""
        self.age_ms: deque[float] = deque(maxlen=512)
        """Milliseconds from each frame's decode to its answer: with the time it waited
        behind the frame before it, what the stream's latency gains here."""
        self.done_at: deque[float] = deque(maxlen=512)
        self.frames = 0
        self.failures = 0
        self.reused = 0
        self.dropped_output = 0
        self._seen: torch.Tensor | None = None
        self._last_out: torch.Tensor | None = None
        self._reused_in_row = 0

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
        if self.skip_similar > 0 and (reuse := self._similar(frame.tensor)) is not None:
            self.reused += 1
            self._note(start, frame)
            return frame.replace_tensor(reuse)
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
        out = image_to_frame(outputs[self.live.output])
        self._last_out = out if self.skip_similar > 0 else None
        self._note(start, frame)
        self._trim_output()
        return frame.replace_tensor(out)

    def _trim_output(self) -> None:
        """The newest answer wins on the way out too: pytrickle hands answered frames to its
        encoder thread through an unbounded queue; keep `MAX_OUTPUT_WAITING` video frames
        there (audio and the end-of-stream mark stay) and count the older ones dropped."""
        client = getattr(self.server, "current_client", None)
        waiting = getattr(getattr(client, "protocol", None), "publish_queue", None)
        if waiting is None or waiting.qsize() <= MAX_OUTPUT_WAITING:
            return
        items = []
        while True:
            try:
                items.append(waiting.get_nowait())
            except queue.Empty:
                break
        videos = [i for i, item in enumerate(items) if isinstance(item, VideoOutput)]
        dropped = set(videos[: max(0, len(videos) - MAX_OUTPUT_WAITING)])
        self.dropped_output += len(dropped)
        for i, item in enumerate(items):
            if i not in dropped:
                waiting.put_nowait(item)

    def _note(self, start: float, frame: VideoFrame) -> None:
        now = time.perf_counter()
        self.latency_ms.append((now - start) * 1000.0)
        self.done_at.append(now)
        decoded = (getattr(frame, "log_timestamps", None) or {}).get("frame_init")
        if decoded is not None:  # pytrickle's decoder stamps each frame with time.time()
            self.age_ms.append(max(0.0, time.time() - decoded) * 1000.0)

    def _similar(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The previous output, when this frame is within `skip_similar` of the last one
        that ran (mean absolute difference over a 1/64 sample, on a 0 to 1 scale)."""
        t = tensor[0] if tensor.dim() == 4 else tensor
        sample = t[::SIMILAR_STRIDE, ::SIMILAR_STRIDE].float()
        if t.dtype == torch.uint8:
            sample = sample / 255.0
        seen, self._seen = self._seen, sample
        if seen is None or self._last_out is None or seen.shape != sample.shape or self._reused_in_row >= MAX_REUSED:
            self._reused_in_row = 0
            return None
        if float((sample - seen).abs().mean()) >= self.skip_similar:
            self._reused_in_row = 0
            return None
        self._seen = seen  # compare with the frame that ran, so a slow drift still triggers a run
        self._reused_in_row += 1
        return self._last_out

    async def process_audio_async(self, frame: AudioFrame) -> list[AudioFrame] | None:
        return [frame]

    async def update_params(self, params: dict[str, Any]) -> None:
        """Apply stream params that map to the graph; log and ignore the rest."""
        inputs: dict[str, Any] = {}
        overrides = dict(self.overrides)
        for name, value in (params or {}).items():
            if name == "skip_similar":
                self._set_skip_similar(value)
                continue
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
        self._reused_in_row = MAX_REUSED  # new params: the next frame runs, however still the scene

    def _set_skip_similar(self, value: Any) -> None:
        try:
            threshold = float(value)
        except (TypeError, ValueError):
            threshold = -1.0
        if not 0.0 <= threshold <= 1.0:
            log.warning("stream param skip_similar ignored: %r is not a number from 0 to 1", value)
            return
        self.skip_similar = threshold

    async def on_stream_start(self, params: dict[str, Any]) -> None:
        client = getattr(self.server, "current_client", None)
        if client is not None:  # a new stream on this server: its own params and counts
            self.skipper = NewestFrame()
            client.frame_skipper = self.skipper  # the newest frame wins from the stream's first frame
            self.frames = self.failures = self.reused = self.dropped_output = 0
            self.latency_ms.clear()
            self.age_ms.clear()
            self.done_at.clear()
            self._seen = self._last_out = None
            self.inputs, self.overrides, self.params = {}, {}, self.plan.params_for(None)
            self.skip_similar = self.live.skip_similar
        await self.update_params(params or {})

    def stats(self) -> dict[str, Any]:
        """Frames done, dropped (the newest won) and reused (similar to the last), and
        latency percentiles (ms: here, and from decode to answer), and output fps over the
        last 512 frames."""
        ms = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(1)
        age = np.asarray(self.age_ms) if self.age_ms else np.zeros(1)
        span = self.done_at[-1] - self.done_at[0] if len(self.done_at) > 1 else 0.0
        return {
            "frames": self.frames,
            "dropped": self.skipper.dropped + self.dropped_output,
            "dropped_output": self.dropped_output,
            "reused": self.reused,
            "failures": self.failures,
            "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)),
            "age_p50_ms": float(np.percentile(age, 50)),
            "age_p99_ms": float(np.percentile(age, 99)),
            "fps": (len(self.done_at) - 1) / span if span > 0 else 0.0,
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
    batcher: FrameBatcher | None = None,
) -> StreamServer:
    """pytrickle's `StreamServer` for the graph, with `/ready`, the bearer check (token from
    `settings.token_env`) and 503 LOADING on start until warm. `batcher`: shared with the
    other streams' servers (`livepeer.streams`)."""
    if settings.live is None:
        raise ValueError("the graph's livepeer section has no 'live' settings (input and output)")
    processor = GraphFrameProcessor(plan, run, is_ready, settings.live, run_batch, batcher=batcher)
    token = settings.token() if check_token else None

    async def ready(request: web.Request) -> web.Response:
        if await is_ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "loading"}, status=503)

    server = StreamServer(
        frame_processor=processor,
        host=host,
        port=port,
        pipeline="byoc",
        capability_name=settings.name,
        version=plan.spec.version,
        middleware=[_auth_and_loading(token, is_ready)],
        custom_routes=[{"method": "GET", "path": "/ready", "handler": ready}],
    )
    processor.server = server
    return server
