"""Autoscaling that suits batching: `replicas: {min: 1, max: 3}` on a node whose batch
takes 0.5 s. Under load its replicas rise to the max; once the load stops they return to
the min. The target is two batches a replica (one running, one filling), not Ray's 2
requests, so a replica scales out only when frames wait a batch or more.

The delays are short here (up after 1 s of load, down after 4 s of none); the graph's
defaults are 10 s and 120 s."""

import asyncio
import time

import pytest

from benchmarks.soak import run_load
from tests.reliability.support import deploy, frame, nap_graph, png_b64, wait_health

pytestmark = pytest.mark.slow

BODY = {"inputs": {"image": png_b64(frame(16, 16))}}


def running(app: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments["nap"]
    return sum(n for state, n in status.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")


def test_replicas_rise_to_the_max_under_load_and_return_to_the_min(cluster):
    from ray import serve

    graph = nap_graph(capability="scaling", seconds=0.5)
    graph["nodes"]["nap"] |= {
        "batch": {"max_size": 2, "wait_ms": 0},
        "replicas": {"min": 1, "max": 3, "upscale_delay_s": 1, "downscale_delay_s": 4, "look_back_period_s": 2},
    }
    deploy("scaling", "/scaling", graph, request_timeout_s=30)
    url = cluster.url + "/scaling"
    try:
        wait_health(url, 60)
        assert running("scaling") == 1
        config = serve.status().applications["scaling"].deployments["nap"]
        counts: list[int] = []

        async def load_and_watch():
            async def watch():
                start = time.monotonic()
                while time.monotonic() - start < 30 and max(counts, default=0) < 3:
                    counts.append(await asyncio.to_thread(running, "scaling"))
                    await asyncio.sleep(0.5)

            stop = asyncio.Event()

            async def stop_when_scaled():
                await watch()
                stop.set()

            # 12 clients: about 12 frames held against a target of 4 (two batches of 2) a replica
            await asyncio.gather(
                run_load(url + "/v1/scaling", BODY, 12, 40.0, timeout_s=30, stop=stop), stop_when_scaled()
            )

        asyncio.run(load_and_watch())
        assert max(counts) == 3, f"replicas seen under load: {counts} ({config})"
        deadline = time.monotonic() + 60
        while running("scaling") > 1 and time.monotonic() < deadline:
            time.sleep(1)
        assert running("scaling") == 1
        wait_health(url, 30)
    finally:
        serve.delete("scaling")
