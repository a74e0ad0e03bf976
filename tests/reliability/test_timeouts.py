"""A node that hangs (the test-only `sleepy` family asked to sleep past the timeout) makes
its requests answer 504 at the configured `request_timeout_s` (2 s here) or at the caller's
shorter deadline, never later; the ingress stays responsive meanwhile, the node's other
replica keeps serving, and once the hang ends every request succeeds again."""

import asyncio
import time

import httpx
import pytest

from tests.reliability.support import frame, png_b64, wait_health

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0
HANG_S = 6.0


def body(seconds: float = 0.0) -> dict:
    return {"inputs": {"image": png_b64(frame(16, 16))}, "params": {"nap.seconds": seconds}}


async def timed(client: httpx.AsyncClient, method: str, url: str, delay: float = 0.0, **kwargs) -> tuple[int, float, str]:
    await asyncio.sleep(delay)
    start = time.monotonic()
    reply = await client.request(method, url, **kwargs)
    return reply.status_code, time.monotonic() - start, reply.text


def test_a_hung_node_answers_504_at_the_timeout_and_the_rest_keeps_serving(nap):
    async def scenario():
        async with httpx.AsyncClient(timeout=30) as client:
            hung = timed(client, "POST", nap + "/v1/nap", json=body(HANG_S))
            # While it hangs (before the ingress gives up on it): frames on the other replica,
            # the health check, the schema and a bad request, each answered at once.
            others = [timed(client, "POST", nap + "/v1/nap", 0.2 + 0.25 * i, json=body()) for i in range(6)]
            probes = [timed(client, "GET", nap + "/health", 0.5), timed(client, "GET", nap + "/v1/nap/schema", 0.7),
                      timed(client, "POST", nap + "/v1/nap", 0.9, json={"inputs": {}})]
            return await asyncio.gather(hung, *others, *probes)

    (status, took, text), *rest = asyncio.run(scenario())
    others, (health, schema, bad) = rest[:6], rest[6:]
    print(f"\nhung request: {status} after {took:.2f}s (timeout {TIMEOUT_S:g}s); others: {[(s, round(t, 2)) for s, t, _ in others]}")
    assert status == 504 and TIMEOUT_S - 0.05 <= took < TIMEOUT_S + 1.5, (status, took, text)
    assert "did not answer within 2 s" in text
    assert all(s == 200 and t < 1.5 for s, t, _ in others), others
    assert health[0] == 200 and schema[0] == 200 and bad[0] == 422
    assert max(health[1], schema[1], bad[1]) < 1.0


def test_a_callers_shorter_deadline_wins(nap):
    start = time.monotonic()
    reply = httpx.post(nap + "/v1/nap", json=body(1.5), headers={"x-capgraph-timeout-s": "0.5"}, timeout=30)
    took = time.monotonic() - start
    assert reply.status_code == 504 and 0.45 <= took < 1.5, (reply.status_code, took)


def test_every_request_succeeds_once_the_hang_is_over(nap):
    # After a timeout the ingress cancels the request, so Ray's router no longer counts the
    # hung replica as busy and may send it new frames, which wait behind the hang: only
    # once the hung batches end is every replica free again.
    time.sleep(HANG_S)
    wait_health(nap, 10)

    async def burst():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(timed(client, "POST", nap + "/v1/nap", json=body()) for _ in range(12)))

    answers = asyncio.run(burst())
    assert all(s == 200 and t < 2 for s, t, _ in answers), answers
    longer = httpx.post(nap + "/v1/nap", json=body(3.0), headers={"x-capgraph-timeout-s": "9999"}, timeout=30)
    assert longer.status_code == 504  # a caller's longer deadline never extends request_timeout_s
