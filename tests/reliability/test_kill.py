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
"""The longest the load runs: it ends AFTER_S after /health is back to 200."""
KILL_AT_S = 3.0
AFTER_S = 5.0
"""How long the load goes on once the replacement serves."""


def recovered_at(probes: list[tuple[float, int, str]], kill_at: float) -> float | None:
    """When /health answered 200 again after turning 503 past the kill (None: not yet)."""
    down = next((t for t, status, _ in probes if t > kill_at and status == 503), None)
    return next((t for t, status, _ in probes if down is not None and t > down and status == 200), None)


def test_killing_a_node_replica_under_load(hybrid):
    from ray import serve

    wait_health(hybrid, 60)
    victim = serve.get_deployment_handle("generate", app_name="hybrid").state.remote().result(timeout_s=30)["pid"]
    probes: list[tuple[float, int, str]] = []
    killed: list[float] = []

    async def scenario():
        start = time.monotonic()
        stop = asyncio.Event()

        def probe():
            return probe_health(hybrid, start, probes, lambda: not stop.is_set(), every_s=0.1)

        async def kill():
            await asyncio.sleep(KILL_AT_S)
            killed.append(time.monotonic() - start)
            os.kill(victim, signal.SIGKILL)

        async def end():  # AFTER_S of load once the replacement serves, LOAD_S at the most
            while time.monotonic() - start < LOAD_S:
                back = recovered_at(probes, killed[0]) if killed else None
                if back is not None and time.monotonic() - start > back + AFTER_S:
                    break
                await asyncio.sleep(0.2)
            stop.set()

        load, *_ = await asyncio.gather(
            run_load(hybrid + ROUTE, good_body(), CLIENTS, LOAD_S, timeout_s=90, stop=stop), probe(), kill(), end()
        )
        return load

    load = asyncio.run(scenario())
    kill_at = killed[0]
    down = next(t for t, status, _ in probes if t > kill_at and status == 503)
    back = recovered_at(probes, kill_at)
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
    assert all(r.status == 200 for r in after)  # every request sent after recovery succeeds
    if not after:  # the replacement came back as the load ended, or after it: it must still come back
        wait_health(hybrid, 90)
    for _ in range(3):  # and serving resumes: fresh requests after /health is 200 again succeed
        assert httpx.post(hybrid + ROUTE, json=good_body(), timeout=60).status_code == 200
    new = serve.get_deployment_handle("generate", app_name="hybrid").state.remote().result(timeout_s=30)["pid"]
    assert new != victim
