"""Live streams as a viewer sees them: real streams over trickle on loopback, through
pytrickle, at a chosen input rate, for 1, 4 and 8 concurrent streams, in process and
served on Ray, on tiny models.

    python benchmarks/live.py [--graph graphs/live-depth-turbo.yaml] [--fps 4] [--seconds 20]
                              [--streams 1,4,8] [--modes in_process,served] [--json]
                              [--params-change 'prompt=a neon city'] [--similar 0.02]

Each stream is H.264 MPEG-TS published frame by frame at `--fps` into a trickle channel
(pytrickle's `TricklePublisher`, one segment a second, as a gateway publishes), started
with `/stream/start` as go-livepeer's orchestrator starts it (`X-Stream-Id`), and its
output read as it arrives (pytrickle's `TrickleSubscriber`) and decoded as a low-delay
player would, from a trickle server that streams segments as go-livepeer's does
(`benchmarks/trickle.py`). Per stream: output fps against input fps, glass-to-glass
latency (a frame handed to the publisher to the same frame decoded from the output,
matched by timestamp) p50/p99, frames dropped (the newest frame won; pytrickle's decoder
probes about 5 s of input before its first frame, and drops at start are counted too);
per run: the mean batch per node across streams, and the serving CPU per frame: CPU of
the processes serving (the in-process server's own process, or the ingress's and the
replicas') less the CPU the nodes' batches took in their thread (torch at one thread),
over the frames the graph ran. The first 30% of a run, and the first second after a
stream's first output, are left out of fps and latency.

`in_process` serves the graph from `livepeer.local` in a process of its own (so its CPU is
its own); `served` on Ray Serve on this machine. With `--json`, one JSON object with a
list `runs`, one entry per mode and stream count: `mode`, `streams`, `fps_in`, `fps_out`
(means over the streams), `latency_p50_ms`, `latency_p99_ms` (over every frame of every
stream), `dropped` (total), `mean_batch` (per node), `serve_cpu_ms_per_frame`, and more
(`per_stream`, `graph_ms`, `bound_ms`: twice the graph's median time per frame plus one
frame interval, `latency_growth_ms`: p99 of the second half of the window less the
first's, `frames`, `cpu_ms_per_frame`, `node_ms_per_frame`). `--params-change` adds
`params_change`: output frames, after a `/stream/params` call returns, until the new value
shows (a still scene, so each value gives one picture). `--similar T` adds `similar`: CPU
per input frame on a still scene with `live.skip_similar` off and at T. Other processes on
the machine disturb the figures: the load averages are reported.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENV = {
    "CAPGRAPH_MODELS": "tiny",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "CAPGRAPH_TINY_DIR": os.environ.get("CAPGRAPH_TINY_DIR", str(ROOT / ".capgraph" / "tiny")),
    "RAY_USAGE_STATS_ENABLED": "0",
}
"""Set for the benchmark's own process in `main` (not on import: the tests import `publish`)."""
GRAPH = ROOT / "graphs" / "live-depth-turbo.yaml"
SEGMENT_S = 1.0
"""Input segment length: one GOP a segment, as a gateway cuts them."""
WARM_FRACTION = 0.3
"""The first 30% of each run is left out of its figures (decoder probing, batches settling)."""
TAIL_S = 3.0
"""How long after the last input frame the output is still awaited."""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scene(stream: int, index: int, width: int, height: int, still: bool) -> np.ndarray:
    """A test picture: a gradient with a bright square that moves one step a frame (or stands still)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    image = np.stack([x, y, np.full_like(x, 60 + 20 * stream)], axis=-1)
    side = max(8, min(width, height) // 4)
    step = 0 if still else index * 3
    left, top = step % (width - side), (step // 2) % (height - side)
    image[top : top + side, left : left + side] = 255
    return image.astype(np.uint8)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# -- one stream ---------------------------------------------------------------------------


class _Sink:
    """A file-like object the muxer writes to; `take()` hands over what it wrote."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


async def publish(url: str, stream: int, fps: float, seconds: float, size: tuple[int, int], still: bool) -> dict:
    """Publish `seconds` of frames at `fps`, each handed to trickle as soon as it is encoded.
    Returns {frame index: when it was handed over (time.monotonic())}."""
    import av
    from pytrickle.publisher import TricklePublisher

    width, height = size
    publisher = TricklePublisher(url, mime_type="video/mp2t")
    await publisher.start()
    sent: dict[int, float] = {}
    total, per_segment = int(fps * seconds), max(1, int(round(fps * SEGMENT_S)))
    pictures = [scene(stream, i, width, height, still) for i in range(1 if still else 64)]
    start = time.monotonic() + 0.05
    index = 0
    try:
        while index < total:
            segment = await publisher.next()
            sink = _Sink()
            container = av.open(sink, "w", format="mpegts", buffer_size=1024, container_options={"max_delay": "0"})
            rate = Fraction(fps).limit_denominator(1000)
            video = container.add_stream(
                "libx264", rate=rate, options={"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
            )
            video.codec_context.time_base = 1 / rate
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            for _ in range(per_segment):
                if index >= total:
                    break
                await asyncio.sleep(max(0.0, start + index / fps - time.monotonic()))
                frame = av.VideoFrame.from_ndarray(pictures[index % len(pictures)], format="rgb24")
                frame.pts, frame.time_base = index, 1 / rate
                for packet in video.encode(frame):
                    container.mux(packet)
                await segment.write(sink.take())
                sent[index] = time.monotonic()
                index += 1
            for packet in video.encode():
                container.mux(packet)
            container.close()
            await segment.write(sink.take())
            await segment.close()
    finally:
        await publisher.close()
    return sent


class Receiver:
    """The stream's output as a viewer's player takes it: pytrickle's `TrickleSubscriber`
    reads each segment as it arrives and a decoder set for low delay (no probing, slice
    threads) decodes it; when each frame came (by its timestamp, in seconds) and, where
    asked, a small copy of the picture."""

    def __init__(self, url: str, size: tuple[int, int], keep_pictures: bool = False):
        self.url, self.size, self.keep = url, size, keep_pictures
        self.got: list[tuple[float, float]] = []
        self.pictures: list[tuple[float, np.ndarray]] = []
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._subscribe())

    async def _subscribe(self) -> None:
        import threading

        from pytrickle.subscriber import TrickleSubscriber

        read_fd, write_fd = os.pipe()
        threading.Thread(target=self._decode, args=(read_fd,), daemon=True, name="bench-decoder").start()
        pipe = os.fdopen(write_fd, "wb", buffering=0)
        try:
            async with TrickleSubscriber(self.url) as subscriber:
                while True:
                    segment = await subscriber.next()
                    if segment is None:
                        break
                    try:
                        while chunk := await segment.read():
                            await asyncio.to_thread(pipe.write, chunk)
                    finally:
                        await segment.close()
                    if segment.eos():
                        break
        finally:
            pipe.close()

    def _decode(self, read_fd: int) -> None:
        import av

        options = {"probesize": "32", "analyzeduration": "0", "fflags": "nobuffer"}
        try:
            # ffmpeg's pipe protocol hands over what has arrived (a Python file would wait for 32 KB)
            with av.open(f"pipe:{read_fd}", "r", format="mpegts", options=options) as container:
                video = container.streams.video[0]
                video.thread_type = "SLICE"  # frame threads would hold frames back
                for frame in container.decode(video):
                    now = time.monotonic()
                    seconds = float(frame.pts * frame.time_base) if frame.pts is not None else -1.0
                    self.got.append((now, seconds))
                    if self.keep:
                        self.pictures.append((seconds, frame.to_ndarray(format="rgb24")[::4, ::4].copy()))
        except Exception:  # the stream cut off mid-frame at its end
            pass

    async def stop(self) -> None:
        """Wait for the output to end (its channel closed), then give up on it."""
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 15)
            except (TimeoutError, asyncio.CancelledError, Exception):
                pass


def latencies(
    sent: dict[int, float], got: list[tuple[float, float]], fps: float, offset_s: float
) -> list[tuple[int, float]]:
    """(input index, glass-to-glass ms) for each output frame; an output frame's timestamp is
    its input frame's, shifted by `offset_s` (what the muxers add)."""
    out = []
    for when, seconds in got:
        index = int(round((seconds - offset_s) * fps))
        if index in sent:
            out.append((index, (when - sent[index]) * 1000.0))
    return out


def pts_offset(got: list[tuple[float, float]], sent: dict[int, float], fps: float) -> float:
    """What the MPEG-TS muxers add to timestamps (libavformat's mpegts writes PTS plus
    2 x max_delay; pytrickle's output muxer keeps the default 0.7 s): the whole number of
    0.7 s steps that makes the earliest answers arrive after their frames were sent."""
    if not got or not sent:
        return 0.0
    for steps in range(0, 8):
        offset = steps * 0.7
        pairs = latencies(sent, got[:20], fps, offset)
        if pairs and min(ms for _, ms in pairs) >= 0:
            return offset
    return 0.0


# -- a run: n streams against one service ---------------------------------------------------


async def run_streams(
    base_url: str,
    trickle: Any,
    label: str,
    streams: int,
    fps: float,
    seconds: float,
    size: tuple[int, int],
    *,
    still: bool = False,
    params: dict[str, Any] | None = None,
    change: tuple[str, Any] | None = None,
) -> dict[str, Any]:
    import httpx

    width, height = size
    ids = [f"{label}-{k}" for k in range(streams)]
    receivers = [Receiver(trickle.url(f"{i}-out"), size, keep_pictures=change is not None) for i in ids]
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for i in ids:
            body = {
                "gateway_request_id": i,
                "subscribe_url": trickle.url(f"{i}-in"),
                "publish_url": trickle.url(f"{i}-out"),
                "control_url": trickle.url(f"{i}-control"),
                "events_url": trickle.url(f"{i}-events"),
                "params": {"width": width, "height": height, "max_framerate": min(60, int(fps)), **(params or {})},
            }
            answer = await client.post("/stream/start", json=body, headers={"X-Stream-Id": i})
            answer.raise_for_status()
        for receiver in receivers:
            receiver.start()
        publishing = [
            asyncio.create_task(publish(trickle.url(f"{i}-in"), k, fps, seconds, size, still))
            for k, i in enumerate(ids)
        ]
        changed_at = None
        if change is not None:
            await asyncio.sleep(seconds / 2)
            await client.post("/stream/params", json={change[0]: change[1]}, headers={"X-Stream-Id": ids[0]})
            changed_at = time.monotonic()
        sent = await asyncio.gather(*publishing)
        await asyncio.sleep(TAIL_S)
        statuses = [(await client.get("/stream/status", headers={"X-Stream-Id": i})).json() for i in ids]
        for i in ids:
            await client.post("/stream/stop", json={}, headers={"X-Stream-Id": i})
    for i in ids:  # the orchestrator closes a stream's channels when it ends
        await asyncio.to_thread(trickle.close, f"{i}-out")
    for receiver in receivers:
        await receiver.stop()

    per_stream, every_ms, early, late = [], [], [], []
    for k, (receiver, sent_k, status) in enumerate(zip(receivers, sent, statuses)):
        offset = pts_offset(receiver.got, sent_k, fps)
        # measured: frames sent after the first WARM_FRACTION of the run, and after the stream's
        # first output (pytrickle's decoder probes the input before its first frame)
        first_sent = min(sent_k.values()) if sent_k else 0.0
        begin = max(first_sent + WARM_FRACTION * seconds, receiver.got[0][0] + 1.0 if receiver.got else 0.0)
        measured = [i for i, when in sent_k.items() if when >= begin]
        window = (sent_k[measured[-1]] - sent_k[measured[0]] + 1 / fps) if measured else 1e-3
        pairs = [(i, ms) for i, ms in latencies(sent_k, receiver.got, fps, offset) if sent_k[i] >= begin]
        ms = [m for _, m in pairs]
        every_ms += ms
        middle = (measured[0] + measured[-1]) / 2 if measured else 0
        early += [m for i, m in pairs if i < middle]
        late += [m for i, m in pairs if i >= middle]
        live = status.get("live", {})
        per_stream.append(
            {
                "stream": ids[k],
                "fps_in": round(len(measured) / window, 2),
                "measured_s": round(window, 1),
                "fps_out": round(len(pairs) / window, 2),
                "latency_p50_ms": round(percentile(ms, 50), 1),
                "latency_p99_ms": round(percentile(ms, 99), 1),
                "dropped": int(live.get("dropped", 0)),
                "ran": int(live.get("frames", 0)),
                "reused": int(live.get("reused", 0)),
                "graph_p50_ms": round(float(live.get("p50_ms", 0.0)), 1),
                "pts_offset_s": offset,
            }
        )
    result: dict[str, Any] = {
        "streams": streams,
        "fps_in": round(statistics.mean(s["fps_in"] for s in per_stream), 2),
        "fps_out": round(statistics.mean(s["fps_out"] for s in per_stream), 2),
        "latency_p50_ms": round(percentile(every_ms, 50), 1),
        "latency_p99_ms": round(percentile(every_ms, 99), 1),
        "latency_growth_ms": round(percentile(late, 99) - percentile(early, 99), 1) if early and late else None,
        "dropped": sum(s["dropped"] for s in per_stream),
        "frames": sum(s["ran"] for s in per_stream),
        "reused": sum(s["reused"] for s in per_stream),
        "frames_in": sum(len(s) for s in sent),
        "per_stream": per_stream,
    }
    if change is not None:
        result["params_change"] = frames_until_change(receivers[0], sent[0], fps, changed_at)
    return result


def frames_until_change(receiver: Receiver, sent: dict[int, float], fps: float, changed_at: float | None) -> dict:
    """Output frames of inputs sent after the params call returned, up to and including the
    first that shows the new value (a still scene: the old value's picture is the one
    shown just before the call)."""
    offset = pts_offset(receiver.got, sent, fps)
    by_index = {int(round((s - offset) * fps)): p for s, p in receiver.pictures}
    before = [p for i, p in by_index.items() if i in sent and sent[i] < (changed_at or 0)]
    after = sorted(i for i in by_index if i in sent and sent[i] >= (changed_at or 0))
    if not before or not after:
        return {"frames": None, "note": "no output around the change"}
    old = before[-1].astype(np.float32)
    # a still scene with fixed params gives one picture; the codecs' own jitter sets the floor
    floor = float(np.abs(before[-2].astype(np.float32) - old).mean()) if len(before) > 1 else 0.0
    threshold = 3 * floor + 1.0  # of 255
    diffs = []
    for n, i in enumerate(after, start=1):
        diffs.append(round(float(np.abs(by_index[i].astype(np.float32) - old).mean()), 2))
        if diffs[-1] > threshold:
            return {
                "frames": n,
                "ms_after_call": round((sent[i] - (changed_at or 0)) * 1000.0, 1),
                "threshold": round(threshold, 2),
                "diffs": diffs,
            }
    return {"frames": None, "note": "the output never changed", "threshold": round(threshold, 2), "diffs": diffs[:20]}


# -- the services ---------------------------------------------------------------------------


def serve_local(graph: str, port: int) -> None:
    """`--serve-local`: the graph from `livepeer.local` on 127.0.0.1:port, plus `GET /bench`
    with this process's CPU seconds, the nodes' milliseconds and the batches run."""
    import psutil
    import uvicorn

    from capgraph.engine.validate import load_plan
    from capgraph.livepeer.local import ExecutorBackend, local_app
    from capgraph.livepeer.settings import load_settings, read_section

    plan = load_plan(graph)
    settings = load_settings(plan, read_section(Path(graph)), environ={})

    class Counting(ExecutorBackend):
        node_ms = 0.0
        batches: list[int] = []

        def _run_each(self, frames: list, params: list) -> Any:
            import torch

            torch.set_num_threads(1)  # the nodes' CPU is then all in this thread
            cpu = time.thread_time()
            result = super()._run_each(frames, params)
            self.node_ms += (time.thread_time() - cpu) * 1000.0
            self.batches.append(len(frames))
            return result

    backend = Counting(plan)
    app = local_app(plan, settings, backend)
    me = psutil.Process()

    @app.get("/bench")
    async def bench() -> dict[str, Any]:
        cpu = me.cpu_times()
        return {"cpu_s": cpu.user + cpu.system, "node_ms": backend.node_ms, "batches": list(backend.batches)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


class InProcess:
    mode = "in_process"

    def __init__(self, graph: str, fuse: str = "auto"):
        self.graph, self.port = graph, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-local", self.graph, "--port", str(self.port)], env=os.environ.copy()
        )

    def wait_ready(self, timeout: float = 600) -> None:
        wait_ready(self.base, timeout)

    def figures(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.base}/bench", timeout=30).json()

    def cpu_and_nodes(self, before: dict, after: dict) -> tuple[float, float, dict[str, float]]:
        """CPU ms, node ms and mean batch per node between two `figures()`."""
        batches = after["batches"][len(before["batches"]) :]
        mean = round(sum(batches) / len(batches), 2) if batches else None
        nodes = {n: mean for n in node_ids(self.graph)}
        return (after["cpu_s"] - before["cpu_s"]) * 1000.0, after["node_ms"] - before["node_ms"], nodes

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class Served:
    mode = "served"

    def __init__(self, graph: str, fuse: str = "auto"):
        import ray
        from ray import serve

        from capgraph.serve.app import CapabilityArgs, build

        self.graph, self.port = graph, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        ray.init(namespace="serve", include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": ENV})
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        serve.run(build(CapabilityArgs(graph=graph, fuse=fuse)), name="live", route_prefix="/", blocking=False)

    def wait_ready(self, timeout: float = 600) -> None:
        wait_ready(self.base, timeout)

    def processes(self) -> list[Any]:
        import psutil

        found = []
        for p in psutil.process_iter(["cmdline"]):
            line = " ".join(p.info.get("cmdline") or [])
            if "ServeReplica:live:" in line:
                found.append(p)
        return found

    def figures(self) -> dict[str, Any]:
        import httpx
        from ray import serve

        from capgraph.serve.compile.compiler import INGRESS

        cpu = 0.0
        for p in self.processes():
            try:
                times = p.cpu_times()
                cpu += times.user + times.system
            except Exception:  # a replica gone meanwhile
                pass
        node_cpu_ms = 0.0
        for name in serve.status().applications["live"].deployments:
            if name != INGRESS:
                node_cpu_ms += serve.get_deployment_handle(name, app_name="live").state.remote().result()["node_cpu_ms"]
        live = httpx.get(f"{self.base}/console/api/live", timeout=30).json()
        return {"cpu_s": cpu, "node_ms": node_cpu_ms, "nodes": live["nodes"], "kinds": live.get("frames_by_kind", {})}

    def cpu_and_nodes(self, before: dict, after: dict) -> tuple[float, float, dict[str, float]]:
        """CPU ms of the ingress and replicas, the CPU the replicas' batches took, and each
        node's mean batch (the console's, over its last 30 s)."""
        batch = {n: f.get("batch_mean") for n, f in after["nodes"].items()}
        return (after["cpu_s"] - before["cpu_s"]) * 1000.0, after["node_ms"] - before["node_ms"], batch

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def node_ids(graph: str) -> list[str]:
    from capgraph.engine.validate import load_plan

    return list(load_plan(graph).nodes)


def wait_ready(base: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base} did not become ready in {timeout:g} s")


def run_loop(coro: Any) -> Any:
    """`asyncio.run` without waiting for the loop's threads at the end: a decoder of
    pytrickle's subscriber may still be blocked on its pipe."""
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(64, thread_name_prefix="bench"))
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()  # shuts its executor down without waiting


def measure(service: Any, trickle: Any, label: str, streams: int, args: argparse.Namespace, **kw: Any) -> dict:
    before = service.figures()
    load_before = round(os.getloadavg()[0], 2)
    result = run_loop(
        run_streams(service.base, trickle, label, streams, args.fps, args.seconds, (args.width, args.height), **kw)
    )
    after = service.figures()
    cpu_ms, node_ms, batch = service.cpu_and_nodes(before, after)
    frames = max(1, result["frames"])
    result = {"mode": service.mode, **result}
    result["mean_batch"] = batch
    if "kinds" in after:  # served: frames the node replicas ran, live and batch, over the run
        result["frames_by_kind"] = {k: v - before["kinds"].get(k, 0) for k, v in after["kinds"].items()}
    result["serve_cpu_ms_per_frame"] = round(max(0.0, cpu_ms - node_ms) / frames, 2)
    result["cpu_ms_per_frame"] = round(cpu_ms / frames, 2)
    result["cpu_ms_per_input_frame"] = round(cpu_ms / max(1, result["frames_in"]), 2)
    result["node_ms_per_frame"] = round(node_ms / frames, 2)
    graph_ms = statistics.median(s["graph_p50_ms"] for s in result["per_stream"]) if result["per_stream"] else 0.0
    result["graph_ms"] = graph_ms
    result["bound_ms"] = round(2 * graph_ms + 1000.0 / args.fps, 1)
    result["load"] = [load_before, round(os.getloadavg()[0], 2)]
    return result


def main() -> None:
    os.environ.update(ENV)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default=str(GRAPH))
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="each run's length (60 for the bounded-latency run)"
    )
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--modes", default="in_process,served")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--params-change", default=None, help="KEY=VALUE set mid-stream, e.g. 'prompt=a neon city'")
    parser.add_argument(
        "--similar", type=float, default=None, help="also a still scene with live.skip_similar off and at this"
    )
    parser.add_argument(
        "--fuse", default="auto", help="served: the compiler's fusion (all: one deployment, one hop a frame)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-local", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_local:
        return serve_local(args.serve_local, args.port)

    from benchmarks.trickle import TrickleServer

    trickle = TrickleServer().start()
    report: dict[str, Any] = {
        "fuse": args.fuse,
        "graph": str(Path(args.graph).resolve().relative_to(ROOT)),
        "fps": args.fps,
        "seconds": args.seconds,
        "size": [args.width, args.height],
        "cpus": os.cpu_count(),
        "runs": [],
    }
    try:
        for mode in args.modes.split(","):
            print(f"  {mode}: starting…", file=sys.stderr, flush=True)
            service = {"in_process": InProcess, "served": Served}[mode](args.graph, args.fuse)
            try:
                service.wait_ready()
                for n in (int(x) for x in args.streams.split(",")):
                    print(f"  {mode}: {n} stream(s) for {args.seconds:g} s…", file=sys.stderr, flush=True)
                    report["runs"].append(measure(service, trickle, f"{mode}-{n}", n, args))
                if args.params_change and mode == args.modes.split(",")[0]:
                    key, _, value = args.params_change.partition("=")
                    run = measure(service, trickle, f"{mode}-params", 1, args, still=True, change=(key, value))
                    report["params_change"] = run["params_change"]
                if args.similar is not None and mode == args.modes.split(",")[0]:
                    report["similar"] = {
                        "threshold": args.similar,
                        "off": measure(service, trickle, f"{mode}-still-off", 1, args, still=True),
                        "on": measure(
                            service,
                            trickle,
                            f"{mode}-still-on",
                            1,
                            args,
                            still=True,
                            params={"skip_similar": args.similar},
                        ),
                    }
            finally:
                service.close()
    finally:
        trickle.stop()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    sys.stdout.flush()
    # a decoder thread of pytrickle's subscriber can stay blocked on a pipe nobody closes;
    # the figures are out, so leave without joining it
    os._exit(0)


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{report['graph']}, tiny models, {report['size'][0]}x{report['size'][1]} at {report['fps']:g} fps, "
        f"{report['seconds']:g} s a run, {report['cpus']} CPUs"
    )
    print(
        f"{'mode':<11}{'streams':>8}{'fps in':>8}{'fps out':>8}{'p50 ms':>9}{'p99 ms':>9}{'bound':>8}"
        f"{'dropped':>9}{'batch':>7}{'serve cpu ms/frame':>20}"
    )
    for r in report["runs"]:
        batches = [b for b in r["mean_batch"].values() if b]
        print(
            f"{r['mode']:<11}{r['streams']:>8}{r['fps_in']:>8.1f}{r['fps_out']:>8.1f}{r['latency_p50_ms']:>9.0f}"
            f"{r['latency_p99_ms']:>9.0f}{r['bound_ms']:>8.0f}{r['dropped']:>9}{max(batches, default=0):>7.2f}"
            f"{r['serve_cpu_ms_per_frame']:>20.2f}"
        )
    if "params_change" in report:
        print(f"params change shows after {report['params_change']}")
    if "similar" in report:
        s = report["similar"]
        print(
            f"still scene, CPU ms per input frame: filter off {s['off']['cpu_ms_per_input_frame']}, "
            f"on ({s['threshold']}) {s['on']['cpu_ms_per_input_frame']} ({s['on']['reused']} reused)"
        )


if __name__ == "__main__":
    main()
