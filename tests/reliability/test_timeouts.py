"""A node that hangs (the test-only `sleepy` family asked to sleep past the timeout) makes
its requests answer 504 at the configured `request_timeout_s` (2 s here) or at the caller's
shorter deadline, never later; the ingress stays responsive meanwhile, the node's other
replica keeps serving, and once the hang ends every request succeeds again.

A node that hangs far past its deadline (`stuck_after_s`) no longer holds its replica for
ever: the replica fails Ray's health check, Ray replaces it (its process ends, the hung
thread with it), /health names the node meanwhile and after, and the capability serves
again long before the hang would have ended."""

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.reliability.support import deploy, frame, nap_graph, png_b64, wait_health

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0
HANG_S = 6.0


def body(seconds: float = 0.0) -> dict:
    return {"inputs": {"image": png_b64(frame(16, 16))}, "params": {"nap.seconds": seconds}}


async def timed(
    client: httpx.AsyncClient, method: str, url: str, delay: float = 0.0, **kwargs
) -> tuple[int, float, str]:
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
            probes = [
                timed(client, "GET", nap + "/health", 0.5),
                timed(client, "GET", nap + "/v1/nap/schema", 0.7),
                timed(client, "POST", nap + "/v1/nap", 0.9, json={"inputs": {}}),
            ]
            return await asyncio.gather(hung, *others, *probes)

    (status, took, text), *rest = asyncio.run(scenario())
    others, (health, schema, bad) = rest[:6], rest[6:]
    print(
        f"\nhung request: {status} after {took:.2f}s (timeout {TIMEOUT_S:g}s); "
        f"others: {[(s, round(t, 2)) for s, t, _ in others]}"
    )
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


STUCK_S = 3.0
"""`stuck_after_s` of the `stuck` app: a batch running longer fails the health check."""
FOREVER_S = 60.0
"""How long the hung request's batch would sleep if nobody ended it."""


def test_a_replica_hung_past_stuck_after_is_replaced_and_health_names_the_node(cluster):
    from ray import serve

    # Its own app (one replica, 1 s timeout, Ray checking every second), so the `nap` tests
    # above keep their replicas.
    deploy(
        "stuck",
        "/stuck",
        nap_graph(capability="stuck"),
        request_timeout_s=1.0,
        stuck_after_s=STUCK_S,
        health_check_period_s=1.0,
    )
    url = cluster.url + "/stuck"
    try:
        wait_health(url, 60)
        node = serve.get_deployment_handle("nap", app_name="stuck")
        old_pid = node.state.remote().result(timeout_s=30)["pid"]
        start = time.monotonic()
        hung = httpx.post(url + "/v1/stuck", json=body(FOREVER_S), timeout=30)
        answered = time.monotonic() - start
        assert hung.status_code == 504 and answered < 2.5, (hung.status_code, answered, hung.text)

        def names_it(answer: dict[str, Any]) -> bool:
            return answer["nodes"]["nap"] == "unhealthy" and "nap" in answer.get("replaced", {})

        unhealthy, at = health_until(url, names_it, 30, start)
        assert unhealthy["status"] == "unhealthy", unhealthy
        back, back_at = health_until(url, lambda b: b["status"] == "ok", 60, start)
        new_pid = node.state.remote().result(timeout_s=30)["pid"]
        assert new_pid != old_pid
        served = httpx.post(url + "/v1/stuck", json=body(), timeout=30)
        served_at = time.monotonic() - start
        assert served.status_code == 200, served.text
        assert served_at < FOREVER_S - 15, served_at  # the hung batch still had this long to sleep
        assert gone(old_pid, 10), f"the hung replica's process {old_pid} is still alive"

        why = back["replaced"]["nap"]
        assert f"past the {STUCK_S:g} s limit" in why and "Ray replaced its replica at" in why, back
        # still there for an operator once it is ok again (Ray may report the deployment UNHEALTHY for a
        # moment more while it force-stops the hung replica, which a busy machine stretches)
        later, _ = health_until(url, lambda b: b["status"] == "ok", 60)
        assert later["replaced"]["nap"] == why
        print(
            f"\nhung request: 504 after {answered:.2f}s; /health unhealthy naming 'nap' at {at:.1f}s, 200 again at "
            f"{back_at:.1f}s, a request served at {served_at:.1f}s (the hang would have ended at {FOREVER_S:g}s); "
            f"pid {old_pid} -> {new_pid}; replaced: {why!r}"
        )
    finally:
        serve.delete("stuck")


def health_until(
    url: str, wanted: Callable[[dict[str, Any]], bool], timeout_s: float, since: float | None = None
) -> tuple[dict[str, Any], float]:
    """Poll /health until its body is `wanted`; the body and when (seconds after `since`)."""
    since = time.monotonic() if since is None else since
    deadline = time.monotonic() + timeout_s
    seen: list[tuple[int, str]] = []
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(url + "/health", timeout=5)
            answer = reply.json()
        except (httpx.HTTPError, ValueError):
            answer = None
        if answer is not None:
            if wanted(answer):
                return answer, time.monotonic() - since
            if not seen or seen[-1] != (reply.status_code, answer.get("status")):
                seen.append((reply.status_code, answer.get("status")))
        time.sleep(0.25)
    raise AssertionError(f"{url}/health never answered as wanted within {timeout_s:g}s; saw {seen}")


def gone(pid: int, timeout_s: float) -> bool:
    """Whether process `pid` (a replica on this machine) has ended within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # ended, not yet reaped
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.2)
    return False
