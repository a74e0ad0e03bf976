"""Live before batch in a node replica's batches (`serve.replica.Batcher.take`): where live
frames and batch frames both wait, live frames go first, and batch frames keep their share
(`BATCH_SHARE` of a batch's places, owed across batches), so batch jobs slow down but never
starve. The real batcher, on an event loop, with a run function that records its batches;
then, served on Ray, the live mark reaching every node replica and the console."""

import asyncio
import time

import httpx
import pytest

from capgraph.serve.replica import BATCH_SHARE, Batcher, _Frame
from tests.livepeer.lp_support import EDGES
from tests.serve.support import frame, png_b64, served


def _frame(name: str, live: bool) -> _Frame:
    return _Frame({"name": name}, {}, 0.0, {}, live=live)


def _run_queue(max_size: int, frames: list[_Frame]) -> list[list[str]]:
    """Queue `frames` while a first batch runs, then let the batcher take them all."""
    batches: list[list[str]] = []
    gate = asyncio.Event()

    async def run(batch: list[_Frame]) -> list[dict]:
        batches.append([f.values["name"] for f in batch])
        if len(batches) == 1:
            await gate.wait()  # the first batch runs while the rest queue up behind it
        return [{"values": f.values} for f in batch]

    async def main() -> None:
        batcher = Batcher(run, max_size, wait_s=0.0)
        first = asyncio.create_task(batcher.submit(_frame("first", False)))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(batcher.submit(f)) for f in frames]
        await asyncio.sleep(0.01)
        gate.set()
        answers = await asyncio.gather(first, *waiting)
        assert [a["values"]["name"] for a in answers[1:]] == [f.values["name"] for f in frames]
        assert batcher.taken == {"live": sum(f.live for f in frames), "batch": 1 + sum(not f.live for f in frames)}

    asyncio.run(main())
    return batches[1:]


def test_live_frames_go_ahead_of_queued_batch_frames_which_keep_a_share():
    queued = [_frame(f"b{i}", False) for i in range(8)] + [_frame(f"l{i}", True) for i in range(8)]
    batches = _run_queue(4, queued)
    assert BATCH_SHARE == 0.25
    # each batch of 4 while both wait: 3 live frames and 1 batch frame (the share), oldest first
    assert batches[0] == ["b0", "l0", "l1", "l2"]
    assert batches[1] == ["b1", "l3", "l4", "l5"]
    assert batches[2] == ["b2", "b3", "l6", "l7"]  # live frames gone: batch frames fill the places (queue order)
    assert batches[3] == ["b4", "b5", "b6", "b7"]


def test_one_frame_batches_give_batch_frames_every_fourth_place():
    queued = [_frame(f"b{i}", False) for i in range(3)] + [_frame(f"l{i}", True) for i in range(9)]
    order = [b[0] for b in _run_queue(1, queued)]
    assert order[:8] == ["l0", "l1", "l2", "b0", "l3", "l4", "l5", "b1"]  # never starved
    assert sorted(order) == sorted(f.values["name"] for f in queued)


def test_without_live_frames_batches_are_oldest_first():
    queued = [_frame(f"b{i}", False) for i in range(6)]
    assert _run_queue(4, queued) == [["b0", "b1", "b2", "b3"], ["b4", "b5"]]


# -- served: the live mark reaches every node replica -----------------------------------------


@pytest.fixture(scope="module")
def edges_live(serve_url):
    """The Livepeer test graph (canny edges, no weights), one deployment per node."""
    with served(serve_url, str(EDGES), "edgeslive") as url:
        yield url


def test_live_frames_reach_the_replicas_marked_live_and_jobs_unmarked(edges_live):
    from ray import serve

    from capgraph.engine.validate import load_plan
    from capgraph.serve.compile.compiler import INGRESS

    def taken() -> dict[str, dict[str, int]]:
        names = [n for n in serve.status().applications["edgeslive"].deployments if n != INGRESS]
        return {n: serve.get_deployment_handle(n, app_name="edgeslive").state.remote().result()["taken"] for n in names}

    before = taken()
    ingress = serve.get_deployment_handle(INGRESS, app_name="edgeslive")
    outputs, _ = ingress.run_live.remote({"image": frame(64, 48)}, load_plan(EDGES).params_for(None)).result()
    assert outputs["image"].shape == (48, 64, 3)
    job = httpx.post(f"{edges_live}/v1/edges-live", json={"inputs": {"image": png_b64(frame(64, 48))}}, timeout=60)
    assert job.status_code == 200, job.text
    after = taken()
    for name in after:  # every node ran one live frame and one batch frame
        assert after[name]["live"] - before[name]["live"] == 1, (name, before, after)
        assert after[name]["batch"] - before[name]["batch"] == 1, (name, before, after)
    deadline = time.monotonic() + 15  # the console's reports are cached for half a second
    while True:
        console = httpx.get(f"{edges_live}/console/api/live", timeout=30).json()
        if console["frames_by_kind"]["live"] >= len(after) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert console["frames_by_kind"]["live"] >= len(after) and console["streams"] == []
