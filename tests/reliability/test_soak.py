"""A short soak: 32 clients for 15 s on the tiny hybrid graph (benchmarks/soak.py runs the
full 60 s): zero failed requests, p99 reported, and every replica's memory at the end
within the bound of its start (max(+25 %, +64 MiB))."""

import asyncio

import pytest

from benchmarks.soak import memory_growth, replica_memory, run_load
from tests.reliability.support import ROUTE, good_body, wait_health

pytestmark = pytest.mark.slow


def test_short_soak_has_no_failures_and_no_memory_growth(hybrid):
    wait_health(hybrid, 60)
    asyncio.run(run_load(hybrid + ROUTE, good_body(), 32, 2.0))  # connections open, batches warm
    before = replica_memory("hybrid")
    load = asyncio.run(run_load(hybrid + ROUTE, good_body(), 32, 15.0))
    after = replica_memory("hybrid")
    summary = load.summary()
    rows = memory_growth(before, after)
    print(
        f"\nsoak 32 clients x 15 s: {summary['requests']} requests, {summary['failed']} failed, "
        f"{summary['rps']:.1f} req/s, p50 {summary['p50_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms; "
        "memory growth (MiB): " + ", ".join(f"{r['replica'].split('#')[0]} {r['growth_mib']:+.0f}" for r in rows)
    )
    assert summary["failed"] == 0, [r for r in load.records if r.status != 200][:3]
    assert summary["requests"] >= 32
    assert len(rows) == 6, rows  # five nodes and the ingress, each sampled twice
    assert all(r["within_bound"] for r in rows), rows
