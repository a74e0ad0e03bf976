"""A node's replica process is killed (SIGKILL) under load. /health turns 503 within 5 s,
the frames that replica held fail at once with a retryable 503 (`Retry-After`), frames
sent meanwhile wait for the replacement and succeed, Ray starts a new replica, /health
comes back to 200 and every request after that succeeds. Only requests in flight when the
replica died may fail."""

import asyncio
import os
import signal
import time

import httpx
import pytest

from benchmarks.soak import run_load
from tests.reliability.support import ROUTE, good_body, probe_health, wait_health

pytestmark = pytest.mark.slow

CLIENTS = 6
LOAD_S = 30.0
KILL_AT_S = 3.0


def test_killing_a_node_replica_under_load(hybrid):
    from ray import serve

    wait_health(hybrid, 60)
    victim = serve.get_deployment_handle("generate", app_name="hybrid").state.remote().result(timeout_s=30)["pid"]
    probes: list[tuple[float, int, str]] = []
    killed: list[float] = []

    async def scenario():
        start = time.monotonic()

        def probe():
            return probe_health(hybrid, start, probes, lambda: time.monotonic() - start < LOAD_S, every_s=0.1)

        async def kill():
            await asyncio.sleep(KILL_AT_S)
            killed.append(time.monotonic() - start)
            os.kill(victim, signal.SIGKILL)

        load, *_ = await asyncio.gather(
            run_load(hybrid + ROUTE, good_body(), CLIENTS, LOAD_S, timeout_s=90), probe(), kill()
        )
        return load

    load = asyncio.run(scenario())
    kill_at = killed[0]
    down = next(t for t, status, _ in probes if t > kill_at and status == 503)
    back = next((t for t, status, _ in probes if t > down and status == 200), None)
    failed = [r for r in load.records if r.status != 200]
    in_flight = [r for r in load.records if r.started < kill_at < r.started + r.seconds]
    after = [r for r in load.records if back is not None and r.started > back]
    print(
        f"\nkill: {len(load.records)} requests, {len(in_flight)} in flight at the kill, {len(failed)} failed "
        f"({sorted({r.status for r in failed})}); /health 503 {down - kill_at:.2f}s after the kill, 200 again "
        f"{(back - kill_at) if back else float('nan'):.1f}s after; {len(after)} requests after recovery all "
        f"{sorted({r.status for r in after})}"
    )
    assert down - kill_at < 5.0
    for record in failed:  # only frames in flight on the dead replica, refused at once and retryable
        assert record.status == 503 and record.retry_after == "1", record
        assert record.started < kill_at and record.started + record.seconds < kill_at + 2.0, record
        assert "retry" in record.error and "Traceback" not in record.error, record.error
    assert len(failed) <= len(in_flight)
    assert all(r.seconds < 60 for r in load.records)  # nothing waited past the request timeout
    if back is None:  # the replacement took longer than the load: it must still come back
        wait_health(hybrid, 90)
    else:
        assert all(r.status == 200 for r in after) and after
    for _ in range(3):
        assert httpx.post(hybrid + ROUTE, json=good_body(), timeout=60).status_code == 200
    new = serve.get_deployment_handle("generate", app_name="hybrid").state.remote().result(timeout_s=30)["pid"]
    assert new != victim
