"""Real servers on 127.0.0.1 for the Livepeer tests: the graph service (in-process executor
behind `make_router`) and a fake orchestrator that behaves as go-livepeer does (its
`byoc/job_orchestrator.go` and `ai/runner/live_runner.go`, in
https://github.com/livepeer/go-livepeer): it checks the secret, keeps registrations in
memory, forwards `/process/request/{sub}` jobs with only the headers go-livepeer forwards,
drops a capability on a connection error or a 401, and runs the Live Runner heartbeat registry.
"""

import base64
import io
import json
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from capgraph.engine.plan import Plan
from capgraph.engine.values import encode_image
from capgraph.livepeer.local import ExecutorBackend
from capgraph.livepeer.settings import LivepeerSettings

GRAPHS = Path(__file__).resolve().parent / "graphs"
EDGES = GRAPHS / "edges_live.yaml"
ORCH_SECRET = "orch-secret-for-tests"
TOKEN = "job-token-for-tests"


class ServerThread:
    """A uvicorn server for an ASGI app in a thread, on 127.0.0.1 (lifespan on)."""

    def __init__(self, app: Any, port: int = 0):
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = port

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float = 15.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout} s")


def close_sdk(client: Any) -> None:
    """Close a livepeer-ai SDK client now, in this thread, and disarm its finalizer.

    The SDK attaches `weakref.finalize(client, close_clients, ...)`, which, when it finds
    an event loop running, closes the async client through a `ThreadPoolExecutor` of its
    own. Left to the garbage collector, it can run inside a server thread's
    `asyncio.to_thread`, while that thread's `submit` holds concurrent.futures' module-wide
    lock: its own `submit` then waits for that lock for ever, and so does every thread
    after it (the suite hung so). Called here, in a test's thread with no loop running, it
    closes both HTTP clients at once, and a finalizer runs only once."""
    finalizers = [f for f in list(weakref.finalize._registry) if (found := f.peek()) is not None and found[0] is client]
    assert finalizers, "livepeer-ai no longer registers a finalizer on its client: check how it closes its HTTP clients"
    for finalizer in finalizers:
        finalizer()


# -- the fake orchestrator ------------------------------------------------------------------


@dataclass
class OrchestratorState:
    """What one orchestrator process remembers; a restart starts a new one."""

    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    register_attempts: int = 0
    unregistrations: list[str] = field(default_factory=list)
    forwarded: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    runners: dict[str, dict[str, Any]] = field(default_factory=dict)
    runner_unregistrations: list[str] = field(default_factory=list)


def orchestrator_app(state: OrchestratorState, secret: str = ORCH_SECRET) -> FastAPI:
    app = FastAPI()

    @app.post("/capability/register")
    async def register(request: Request) -> Response:
        state.register_attempts += 1
        if request.headers.get("authorization") != secret:
            return PlainTextResponse("invalid authorization", status_code=400)
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return PlainTextResponse(f"Error registering capability: {exc}", status_code=400)
        state.registrations.append(body)
        state.capabilities[body["name"]] = body  # replaces an existing entry
        return PlainTextResponse("ok")

    @app.post("/capability/unregister")
    async def unregister(request: Request) -> Response:
        if request.headers.get("authorization") != secret:
            return PlainTextResponse("invalid authorization", status_code=400)
        name = (await request.body()).decode()
        state.unregistrations.append(name)
        state.capabilities.pop(name, None)
        return PlainTextResponse("ok")

    @app.post("/process/request/{sub:path}")
    async def process(sub: str, request: Request) -> Response:
        try:
            job = json.loads(base64.b64decode(request.headers["livepeer"]))
        except (KeyError, ValueError):
            return PlainTextResponse("Could not parse Livepeer header", status_code=400)
        if not job.get("timeout_seconds"):
            return PlainTextResponse("timeout_seconds is required", status_code=400)
        capability = state.capabilities.get(job.get("capability", ""))
        if capability is None:
            return PlainTextResponse("No capacity available for capability", status_code=503)
        headers = {"Content-Type": request.headers.get("content-type", "")}
        if capability.get("token"):
            headers["Authorization"] = f"Bearer {capability['token']}"
        url = capability["url"].rstrip("/") + (f"/{sub}" if sub else "")
        state.forwarded.append({"url": url, "headers": dict(headers)})
        try:
            async with httpx.AsyncClient(timeout=job["timeout_seconds"]) as client:
                answer = await client.post(url, content=await request.body(), headers=headers)
        except httpx.TransportError:
            state.capabilities.pop(capability["name"], None)  # unreachable: forget it
            return PlainTextResponse("container unreachable", status_code=500)
        if answer.status_code == 401:
            state.capabilities.pop(capability["name"], None)
        kept = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "x-metadata")}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    @app.post("/runners/heartbeat")
    async def heartbeat(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        body = json.loads(await request.body())
        runner = next((r for r in state.runners.values() if r["heartbeat_secret"] == auth), None)
        if runner is None and auth != secret:
            state.heartbeats.append({"auth": "bad", "body": body})
            return PlainTextResponse("invalid registration authorization", status_code=401)
        state.heartbeats.append({"auth": "orchestrator" if runner is None else "heartbeat", "body": body})
        answer: dict[str, Any] = {
            "orchestrator": "https://127.0.0.1",
            "heartbeat_interval": "300ms",
            "heartbeat_ttl": "2s",
        }
        if runner is None:
            runner = {"runner_id": f"runner_{secrets.token_hex(4)}", "heartbeat_secret": secrets.token_hex(8)}
            state.runners[runner["runner_id"]] = runner
            answer["heartbeat_secret"] = runner["heartbeat_secret"]
        runner.update(status=body["status"], body=body)
        answer["runner_id"] = runner["runner_id"]
        return JSONResponse(answer)

    @app.post("/runners/{runner_id}/unregister")
    async def runner_unregister(runner_id: str, request: Request) -> Response:
        runner = state.runners.get(runner_id)
        if runner is None or request.headers.get("authorization") != runner["heartbeat_secret"]:
            return PlainTextResponse("invalid authorization", status_code=401)
        state.runner_unregistrations.append(runner_id)
        del state.runners[runner_id]
        return Response(status_code=204)

    return app


class FakeOrchestrator:
    """An orchestrator on a fixed port that can be restarted (and so forget everything)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.state = OrchestratorState()
        self.server: ServerThread | None = None
        self.history: list[OrchestratorState] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ServerThread(orchestrator_app(self.state), self.port).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)
        self.history.append(self.state)
        self.state = OrchestratorState()
        self.start()

    def job(self, capability: str, payload: dict[str, Any], timeout_s: int = 30) -> httpx.Response:
        """What livepeer-gateway's `submit_byoc_job` sends: JSON to /process/request/{capability}."""
        header = {"id": "job-1", "request": json.dumps(payload), "capability": capability, "timeout_seconds": timeout_s}
        return httpx.post(
            f"{self.url}/process/request/{capability}",
            json=payload,
            headers={
                "Livepeer": base64.b64encode(json.dumps(header).encode()).decode(),
                "Livepeer-Capability": capability,
            },
            timeout=timeout_s + 5,
        )


# -- the graph service ------------------------------------------------------------------------


class GatedBackend(ExecutorBackend):
    """The in-process executor, reporting ready only once the test opens the gate, so a test
    can watch what happens while the graph is still warming up."""

    def __init__(self, plan: Plan):
        super().__init__(plan)
        self.gate = threading.Event()
        self.gate.set()
        self.runs_open = threading.Event()
        """Cleared, every run waits for it: a test can keep jobs in flight."""
        self.runs_open.set()
        self.runs_started = 0

    async def is_ready(self) -> bool:
        return self.gate.is_set() and await super().is_ready()

    def _run(self, frames: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        self.runs_started += 1
        self.runs_open.wait(timeout=30)
        return super()._run(frames, params)


@dataclass
class Service:
    plan: Plan
    settings: LivepeerSettings
    backend: GatedBackend
    server: ServerThread

    @property
    def url(self) -> str:
        return self.server.url

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(lambda: httpx.get(f"{self.url}/ready").status_code == 200, timeout)


# -- frames --------------------------------------------------------------------------------


def photo(width: int = 160, height: int = 120) -> np.ndarray:
    """A synthetic frame with edges in it: a bright square on a gradient."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    image = np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 60)], axis=-1)
    image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 250
    return image.astype(np.uint8)


def png(image: np.ndarray | None = None) -> bytes:
    return encode_image(photo() if image is None else image, "png")


def data_url(image: np.ndarray | None = None) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def decode_data_url(url: str) -> np.ndarray:
    from PIL import Image

    assert url.startswith("data:image/png;base64,"), url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


# -- a trickle server ----------------------------------------------------------------------


class TrickleChannels:
    """A small trickle server (go-livepeer `trickle/` protocol): `GET /{channel}/{seq}` waits
    for segment `seq` (negative = the first) and answers it with `Lp-Trickle-Seq`, or with
    `Lp-Trickle-Closed` once the channel is closed; `POST /{channel}/{seq}` publishes one.
    Enough for pytrickle's subscriber and publishers to run a stream end to end."""

    def __init__(self) -> None:
        self.segments: dict[str, dict[int, bytes]] = {}
        self.closed: set[str] = set()
        self.pace: dict[str, float] = {}
        """Seconds between segments of a channel opened with `every_s` (a live source)."""
        self.first_read: dict[str, float] = {}
        self.partial: dict[str, dict[int, int]] = {}
        """Bytes received so far of each segment still being published."""
        self.stopping = False
        self.server: ServerThread | None = None

    def _available(self, channel: str, seq: int) -> bool:
        if seq not in self.segments[channel]:
            return False
        every = self.pace.get(channel, 0.0)
        return time.monotonic() >= self.first_read.setdefault(channel, time.monotonic()) + seq * every

    def _ended(self, channel: str, seq: int) -> bool:
        if channel in self.closed:
            return True
        if channel in self.pace and seq >= len(self.segments[channel]):  # a paced source ends after its last segment
            start = self.first_read.setdefault(channel, time.monotonic())
            return time.monotonic() >= start + max(seq, 1) * self.pace[channel]
        return False

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/{channel}/{seq}")
        async def read(channel: str, seq: int) -> Response:
            import asyncio

            if channel not in self.segments:
                return PlainTextResponse("no such channel", status_code=404)
            seq = max(seq, 0)
            deadline = time.monotonic() + 30
            while not self._available(channel, seq) and not self._ended(channel, seq) and not self.stopping:
                if time.monotonic() > deadline:
                    return PlainTextResponse("timeout", status_code=504)
                await asyncio.sleep(0.01)
            if self._available(channel, seq):
                return Response(self.segments[channel][seq], headers={"Lp-Trickle-Seq": str(seq)})
            return Response(b"", headers={"Lp-Trickle-Seq": str(seq), "Lp-Trickle-Closed": "terminate"})

        @app.post("/{channel}/{seq}")
        async def write(channel: str, seq: int, request: Request) -> Response:
            from starlette.requests import ClientDisconnect

            data = bytearray()
            try:
                async for chunk in request.stream():  # a segment streams in as it is encoded
                    data += chunk
                    self.partial.setdefault(channel, {})[seq] = len(data)
            except ClientDisconnect:  # a publisher closing mid-segment keeps what it sent
                pass
            self.segments.setdefault(channel, {})[seq] = bytes(data)
            return PlainTextResponse("")

        return app

    def start(self) -> "TrickleChannels":
        self.server = ServerThread(self.app()).start()
        return self

    def stop(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.stop()

    def url(self, channel: str) -> str:
        assert self.server is not None
        return f"{self.server.url}/{channel}"

    def open(self, channel: str, *segments: bytes, every_s: float | None = None) -> None:
        """A channel holding `segments`; with `every_s`, a live source: segment k becomes
        readable k * every_s after the first read, and the channel ends after the last."""
        self.segments[channel] = dict(enumerate(segments))
        if every_s is not None:
            self.pace[channel] = every_s

    def close(self, channel: str) -> None:
        self.closed.add(channel)


def ts_segment(frames: list[np.ndarray], fps: int = 30) -> bytes:
    """Frames as one MPEG-TS segment of H.264 video, what a gateway publishes."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mpegts") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "tune": "zerolatency", "crf": "10"}
        )
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def ts_frames(data: bytes) -> list[np.ndarray]:
    """Every video frame of MPEG-TS bytes, as uint8 RGB."""
    import av

    with av.open(io.BytesIO(data), format="mpegts") as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
