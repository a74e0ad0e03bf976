"""A new version of the same graph deployed while it serves (what `serve deploy` of an
edited file does): Ray rolls every deployment over to it. Under load, no request fails;
/health is 200 throughout or, while a node has no warm replica, 503 saying which nodes are
updating. Afterwards the new version answers."""

import asyncio
import json
import time

import httpx
import pytest

from benchmarks.soak import run_load
from tests.reliability.support import (
    BODY_LIMIT,
    LIVEPEER,
    MAX_PIXELS,
    ROUTE,
    deploy,
    good_body,
    hybrid_graph,
    probe_health,
    wait_health,
)

pytestmark = pytest.mark.slow

CLIENTS = 4


def test_redeploying_a_new_version_under_load_fails_nothing(hybrid):
    wait_health(hybrid, 60)
    new = hybrid_graph(version="v2")
    new["inputs"]["prompt"]["default"] = "a lighthouse at dawn"
    probes: list[tuple[float, int, str]] = []
    timeline: dict[str, float] = {}

    async def scenario():
        start = time.monotonic()
        stop = asyncio.Event()

        def probe():
            return probe_health(hybrid, start, probes, lambda: not stop.is_set(), timeout_s=10)

        async def update():
            await asyncio.sleep(3)
            timeline["update"] = time.monotonic() - start
            await asyncio.to_thread(
                deploy, "hybrid", "/", new, max_pixels=MAX_PIXELS, max_body_bytes=BODY_LIMIT, livepeer=LIVEPEER
            )
            timeline["running"] = time.monotonic() - start
            await asyncio.sleep(3)
            stop.set()

        load, *_ = await asyncio.gather(
            run_load(hybrid + ROUTE, good_body(), CLIENTS, 240, timeout_s=90, stop=stop), probe(), update()
        )
        return load

    load = asyncio.run(scenario())
    failed = [r for r in load.records if r.status != 200]
    during = [r for r in load.records if timeline["update"] <= r.started <= timeline["running"]]
    not_ok = [(round(t, 1), status, text[:200]) for t, status, text in probes if status != 200]
    print(
        f"\nupdate under load: deploy of v2 took {timeline['running'] - timeline['update']:.1f}s; "
        f"{len(load.records)} requests ({len(during)} sent during the update), {len(failed)} failed; "
        f"/health not 200 in {len(not_ok)} of {len(probes)} probes" + (f", e.g. {not_ok[0]}" if not_ok else "")
    )
    assert not failed, failed[:3]
    assert during, "no request was sent while the update ran"
    for t, status, text in not_ok:
        body = json.loads(text)
        assert status == 503 and body["status"] == "updating" and "updating" in body["nodes"].values(), (
            t,
            status,
            text,
        )
    schema = httpx.get(hybrid + ROUTE + "/schema", timeout=10).json()
    assert schema["version"] == "v2" and schema["inputs"]["prompt"]["default"] == "a lighthouse at dawn"
    assert httpx.post(hybrid + ROUTE, json=good_body(), timeout=60).status_code == 200
