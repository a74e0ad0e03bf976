"""Live streams at frame rate: the newest frame wins when the graph is slower than the
stream (dropped frames counted, latency bounded), several streams share one service with
their frames batched together fairly, and a still scene reuses the last output.

Streams are real: H.264 MPEG-TS published frame by frame at 30 fps over a trickle server
that streams segments as go-livepeer's does (benchmarks/trickle.py, benchmarks/live.py's
publisher), through pytrickle's `StreamServer`s; the slow graph is the test-only `sleepy`
family (100 ms a batch).
"""

import asyncio

import httpx
import pytest

pytest.importorskip("pytrickle", reason="live frames need the livepeer extra (pip install capgraph[livepeer])")

import torch  # noqa: E402
from pytrickle.frames import VideoFrame  # noqa: E402

from benchmarks.live import publish  # noqa: E402
from benchmarks.trickle import TrickleServer  # noqa: E402
from capgraph.engine.validate import load_plan  # noqa: E402
from capgraph.livepeer.live import GraphFrameProcessor, NewestFrame, stream_server  # noqa: E402
from capgraph.livepeer.local import ExecutorBackend  # noqa: E402
from capgraph.livepeer.settings import load_settings, read_section  # noqa: E402
from tests.livepeer.lp_support import EDGES, GRAPHS, free_port, photo  # noqa: E402
from tests.reliability.sleepy import FAMILY, Sleepy  # noqa: E402

SLEEPY = GRAPHS / "sleepy_live.yaml"
NAP_MS = 100.0
FPS, SECONDS = 30, 4


@pytest.fixture
def trickle():
    """A trickle server that streams segments as they are written, as go-livepeer's does
    (a frame reaches the subscriber as soon as it is published)."""
    server = TrickleServer().start()
    yield server
    server.stop()


@pytest.fixture
def sleepy(monkeypatch):
    """The test-only `sleepy` family in this process's catalogue, as tests/reliability adds it."""
    from capgraph.engine.registry import catalogue, register

    monkeypatch.setenv("CAPGRAPH_NODES", FAMILY)
    added = Sleepy.type not in catalogue()
    if added:
        register(Sleepy)
    yield
    if added:
        catalogue().pop(Sleepy.type, None)  # leave the catalogue as later tests expect it


def _start_body(trickle: TrickleServer, stream_id: str, **params) -> dict:
    return {
        "gateway_request_id": stream_id,
        "subscribe_url": trickle.url(f"{stream_id}-in"),
        "publish_url": trickle.url(f"{stream_id}-out"),
        "events_url": trickle.url(f"{stream_id}-events"),
        "params": {"width": 64, "height": 48, "max_framerate": FPS, **params},
    }


def test_newest_frame_wins_and_drops_are_counted():
    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        newest = NewestFrame()
        for i in range(5):
            queue.put_nowait(i)
        assert await newest.process_video_queue(queue) == 4 and newest.dropped == 4
        queue.put_nowait(5)
        assert await newest.process_video_queue(queue) == 5 and newest.dropped == 4  # nothing older waited
        queue.put_nowait(6)
        queue.put_nowait(None)  # the stream ends: the end is passed on
        assert await newest.process_video_queue(queue) is None

    asyncio.run(main())


def test_a_graph_slower_than_the_stream_drops_frames_and_keeps_latency_bounded(sleepy, trickle):
    """30 fps into a 100 ms graph: about two frames in three are dropped, none queue, and a
    frame's time from decode to answer stays within the graph's time plus one frame's
    processing plus one frame interval (with slack for a busy 2-CPU machine)."""

    async def main():
        plan = load_plan(SLEEPY)
        settings = load_settings(plan, read_section(SLEEPY), environ={})
        backend = ExecutorBackend(plan)
        await backend.load()
        port = free_port()
        server = stream_server(
            plan, backend.run, backend.is_ready, settings, host="127.0.0.1", port=port, check_token=False
        )
        runner = await server.start_server()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                await _until(lambda: server.state.startup_complete)
                assert (await client.post("/stream/start", json=_start_body(trickle, "slow"))).status_code == 200
                await publish(trickle.url("slow-in"), 0, FPS, SECONDS, (64, 48), still=False)
                await asyncio.sleep(0.5)
                stats = server.frame_processor.stats()
                await client.post("/stream/stop", json={})
        finally:
            await server.stop()
            await runner.cleanup()
        return stats

    stats = asyncio.run(main())
    assert stats["frames"] >= SECONDS * 1000 / NAP_MS / 3, stats
    assert stats["dropped"] >= stats["frames"], stats  # most frames dropped, never queued
    assert stats["frames"] + stats["dropped"] <= SECONDS * FPS
    bound = NAP_MS + NAP_MS + 1000.0 / FPS
    assert stats["age_p50_ms"] < bound * 2, stats
    # slack for other processes on the 2 CPUs; pytrickle's own skipper lets 15 frames queue (1.5 s here)
    assert stats["age_p99_ms"] < bound * 3, stats


def test_streams_share_the_service_their_frames_batch_together_fairly(sleepy, start_service, trickle):
    """Four streams on one ingress: each has a pytrickle server of its own, their frames
    run in shared batches (more than one frame a batch), each stream gets its share, the
    status names its stream with its counts, and a fifth stream is refused (max_streams 4)."""
    ids = [f"s{k}" for k in range(4)]
    service = start_service(graph=SLEEPY)
    service.wait_ready()

    async def main():
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            for stream_id in ids:
                answer = await client.post(
                    "/stream/start", json=_start_body(trickle, stream_id), headers={"X-Stream-Id": stream_id}
                )
                assert answer.status_code == 200 and answer.json()["request_id"] == stream_id
            busy = await client.post("/stream/start", json=_start_body(trickle, "s4"))
            assert busy.status_code == 503 and "busy" in busy.json()["detail"]["msg"]
            await asyncio.gather(
                *(publish(trickle.url(f"{i}-in"), k, FPS, SECONDS, (64, 48), still=False) for k, i in enumerate(ids))
            )
            await asyncio.sleep(0.5)
            statuses = {}
            for stream_id in ids:
                status = (await client.get("/stream/status", headers={"X-Stream-Id": stream_id})).json()
                assert status["stream_id"] == stream_id and status["client_active"] is True
                statuses[stream_id] = status["live"]
            for stream_id in ids:
                stopped = await client.post("/stream/stop", json={}, headers={"X-Stream-Id": stream_id})
                assert stopped.status_code == 200
        return statuses

    statuses = asyncio.run(main())
    frames = [statuses[i]["frames"] for i in ids]
    assert min(frames) >= 5 and min(frames) >= max(frames) * 0.6, statuses  # none starves
    assert all(s["dropped"] > 0 for s in statuses.values()), statuses
    assert all(trickle.channels[f"{i}-out"].segments for i in ids)  # every stream's output went out
    # the shared batcher: frames of different streams ran together
    assert all(s["batch_mean"] > 1.5 for s in statuses.values()), statuses


def test_a_still_scene_reuses_the_last_output_and_a_new_param_runs_again():
    async def main():
        plan = load_plan(EDGES)
        settings = load_settings(plan, read_section(EDGES), environ={})
        backend = ExecutorBackend(plan)
        await backend.load()
        processor = GraphFrameProcessor(plan, backend.run, backend.is_ready, settings.live, backend.run_batch)
        await processor.update_params({"skip_similar": 0.01})
        image = photo(128, 96)
        still = VideoFrame.from_tensor(torch.from_numpy(image).float().div(255.0).unsqueeze(0), 0)
        first = await processor.process_video_async(still)
        again = await processor.process_video_async(still)
        assert processor.frames == 1 and processor.reused == 1 and torch.equal(first.tensor, again.tensor)
        await processor.update_params({"strength": 0.0})  # a new param shows on the next frame
        changed = await processor.process_video_async(still)
        assert processor.frames == 2 and not torch.equal(changed.tensor, first.tensor)
        moved = image.copy()
        moved[:, :64] = 255 - moved[:, :64]
        await processor.process_video_async(
            VideoFrame.from_tensor(torch.from_numpy(moved).float().div(255.0).unsqueeze(0), 1)
        )
        assert processor.frames == 3  # a different frame runs
        await processor.update_params({"skip_similar": "loud"})  # not a number: ignored
        assert processor.skip_similar == 0.01
        assert processor.stats()["reused"] == 1

    asyncio.run(main())


async def _until(check, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.02)
