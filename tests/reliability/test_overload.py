"""Overload: a capability whose graph can run 4 frames a second (one sleepy node, 0.25 s a
frame, no batching) and whose ingress admits 6 graph requests at once (`max_concurrency`
8, three quarters of it), under 32 clients. The excess gets a retryable 503 with
`Retry-After`, refused before its body is read, and nothing else fails. In front of the
ingress, Ray's proxy queues at most `max_queued_requests`; past it, 503 with Retry-After too.

How fast refusals come and how long the accepted requests wait depend on the machine's
load, so those figures are measured by `python benchmarks/overload.py`, not asserted here.
"""

import asyncio
import concurrent.futures
import socket
import time

import httpx
import pytest

from benchmarks.soak import run_load
from tests.reliability.support import deploy, frame, nap_graph, png_b64, wait_health

pytestmark = pytest.mark.slow

FRAME_S = 0.25
ADMITTED = 6
BODY = {"inputs": {"image": png_b64(frame(16, 16))}}


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


def test_excess_load_gets_503_with_retry_after_and_nothing_else_fails(busy):
    load = asyncio.run(run_load(busy + "/v1/busy", BODY, clients=32, seconds=8, timeout_s=30, honour_retry_after=True))
    accepted = [r for r in load.records if r.status == 200]
    refused = [r for r in load.records if r.status == 503]
    others = [r for r in load.records if r.status not in (200, 503)]
    print(
        f"\noverload, 32 clients x 8 s on a 4 frame/s graph admitting {ADMITTED}: {len(accepted)} served, "
        f"{len(refused)} refused with 503 (latencies: python benchmarks/overload.py)"
    )
    assert not others, others[:5]
    assert len(refused) >= 32 and len(accepted) >= 16
    assert all(r.retry_after == "1" for r in refused)
    assert all("retry" in r.error and '"error"' in r.error for r in refused), refused[0].error
    wait_health(busy, 10)
    assert httpx.post(busy + "/v1/busy", json=BODY, timeout=10).status_code == 200


def test_a_full_capability_refuses_before_reading_the_body(busy):
    """Refusing is cheap in kind: with every slot taken, a request whose body has not
    arrived (1 kB of the 1 MB its headers promise) is answered 503 all the same."""
    hold = {"inputs": BODY["inputs"], "params": {"nap.seconds": 2.0}}
    with concurrent.futures.ThreadPoolExecutor(ADMITTED) as pool:
        held = [pool.submit(httpx.post, busy + "/v1/busy", json=hold, timeout=60) for _ in range(ADMITTED)]
        time.sleep(1.0)  # they reach the ingress before the first probe does
        deadline = time.monotonic() + 10
        while httpx.post(busy + "/v1/busy", json=BODY, timeout=30).status_code != 503:  # every slot taken
            assert time.monotonic() < deadline, "the capability never filled up"
        status, headers = _headers_and_part_of_a_body(busy + "/v1/busy", promised=1 << 20, sent=1024)
        assert status == 503 and headers.get("retry-after") == "1", (status, headers)
        assert all(f.result().status_code == 200 for f in held)


@pytest.fixture(scope="module")
def one_slot(cluster):
    """An ingress that holds one request at a time and whose proxy queues two more."""
    from ray import serve

    deploy(
        "oneslot",
        "/oneslot",
        nap_graph(capability="oneslot"),
        max_concurrency=1,
        max_queued_requests=2,
        request_timeout_s=30,
    )
    url = cluster.url + "/oneslot"
    wait_health(url, 60)
    yield url
    serve.delete("oneslot")


def test_the_proxy_queue_is_bounded_and_past_it_answers_503_with_retry_after(one_slot):
    url = one_slot + "/v1/oneslot"

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            holder = asyncio.create_task(
                client.post(url, json={"inputs": BODY["inputs"], "params": {"nap.seconds": 3.0}})
            )
            await asyncio.sleep(1.0)  # the one slot is taken: the rest wait at the proxy, or are refused there
            rest = await asyncio.gather(*(client.post(url, json=BODY) for _ in range(6)))
            return [await holder, *rest]

    holder, *rest = asyncio.run(burst())
    statuses = sorted(r.status_code for r in rest)
    print(f"\none ingress slot, proxy queue of 2: the holder {holder.status_code}, then {statuses}")
    assert holder.status_code == 200
    refused = [r for r in rest if r.status_code == 503]
    assert statuses.count(200) >= 2 and len(refused) >= 3, statuses  # two queued and served; the rest refused
    assert set(statuses) <= {200, 503}
    assert all(r.headers.get("retry-after") == "1" for r in refused), [dict(r.headers) for r in refused]
    assert all("backpressure" in r.text for r in refused), refused[0].text


def _headers_and_part_of_a_body(url: str, promised: int, sent: int) -> tuple[int, dict[str, str]]:
    """POST with `Content-Length: promised` but only `sent` bytes of the body; the status and
    headers of the answer that comes back anyway (a socket timeout fails the test)."""
    target = httpx.URL(url)
    head = (
        f"POST {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {promised}\r\n\r\n"
    ).encode()
    with socket.create_connection((target.host, target.port), timeout=20) as sock:
        sock.sendall(head + b'{"inputs": {"image": "' + b"A" * (sent - 22))
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed without an answer: {reply[:200]!r}"
            reply += chunk
    lines = reply.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}
