"""Overload: a capability whose graph can run 4 frames a second (one sleepy node, 0.25 s a
frame, no batching) and whose ingress admits 6 graph requests at once (`max_concurrency`
8, three quarters of it), under 32 clients. The excess gets a retryable 503 with
`Retry-After` at once, the accepted requests keep a bounded latency (about 6 x 0.25 s),
and nothing else fails."""

import asyncio

import httpx
import pytest

from benchmarks.soak import percentile, run_load
from tests.reliability.support import deploy, frame, nap_graph, png_b64, wait_health

pytestmark = pytest.mark.slow

FRAME_S = 0.25
ADMITTED = 6


@pytest.fixture(scope="module")
def busy(cluster):
    from ray import serve

    graph = nap_graph(capability="busy", seconds=FRAME_S)
    graph["nodes"]["nap"]["batch"] = {"max_size": 1, "wait_ms": 0}
    deploy("busy", "/busy", graph, max_concurrency=8, request_timeout_s=30)
    url = cluster.url + "/busy"
    wait_health(url, 60)
    yield url
    serve.delete("busy")


def test_excess_load_gets_503_with_retry_after_at_once_and_accepted_latency_stays_bounded(busy):
    body = {"inputs": {"image": png_b64(frame(16, 16))}}
    load = asyncio.run(run_load(busy + "/v1/busy", body, clients=32, seconds=8, timeout_s=30, honour_retry_after=True))
    accepted = sorted(r.seconds for r in load.records if r.status == 200)
    refused = [r for r in load.records if r.status == 503]
    others = [r for r in load.records if r.status not in (200, 503)]
    refused_s = sorted(r.seconds for r in refused)
    print(f"\noverload, 32 clients x 8 s on a 4 frame/s graph admitting {ADMITTED}: {len(accepted)} served "
          f"(p50 {accepted[len(accepted) // 2]:.2f}s, p99 {percentile(accepted, 0.99):.2f}s, max {accepted[-1]:.2f}s), "
          f"{len(refused)} refused with 503 (p99 {percentile(refused_s, 0.99):.3f}s)")
    assert not others, others[:5]
    assert len(refused) >= 32 and len(accepted) >= 16
    assert all(r.retry_after == "1" for r in refused)
    assert all("retry" in r.error and '"error"' in r.error for r in refused), refused[0].error
    assert refused_s[len(refused_s) // 2] < 0.25 and percentile(refused_s, 0.99) < 1.5, refused_s[-5:]
    # Admitted ones wait for at most the 6 ahead of them: 1.75 s. Twice that leaves room for
    # Ray's proxy and a busy machine; without the limit 32 clients would wait 32 x 0.25 = 8 s.
    bound = 2 * (ADMITTED + 1) * FRAME_S
    assert percentile(accepted, 0.99) < bound, accepted[-5:]
    wait_health(busy, 10)
    assert httpx.post(busy + "/v1/busy", json=body, timeout=10).status_code == 200
