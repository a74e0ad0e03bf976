"""Security defaults of a served graph, on Ray: with a bearer token configured every route
but /health and /ready needs it (401 in the Livepeer shape otherwise, under any route
prefix); no answer echoes a secret; no log line of the cluster prints the token or the
orchestrator secret, while the capability registers itself with a (fake) orchestrator."""

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.livepeer.lp_support import ORCH_SECRET, FakeOrchestrator, data_url, wait_for
from tests.reliability.support import TOKEN, TOKEN_ENV, Cluster, assert_clean, deploy, nap_graph, wait_health

pytestmark = pytest.mark.slow

UNAUTHORIZED = {"detail": {"msg": "Invalid bearer token."}}
BAD_TOKENS = (
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": TOKEN},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Bearer {TOKEN}{TOKEN}"},
)


@pytest.fixture(scope="module")
def secure(cluster: Cluster) -> Iterator[tuple[str, FakeOrchestrator]]:
    """A one-node graph at /secure with the token required, ai-runner and BYOC routes, and
    BYOC registration with a fake orchestrator (which needs the orchestrator secret)."""
    from ray import serve

    orchestrator = FakeOrchestrator()
    orchestrator.start()
    url = cluster.url + "/secure"
    section = {
        "token_env": TOKEN_ENV,
        "url": url,
        "capacity": 2,
        "probe_s": 0.5,
        "byoc": {"orchestrator": orchestrator.url, "interval_s": 2},
        "routes": {"image-to-image": {"image": "image", "images": "image"}},
    }
    deploy("secure", "/secure", nap_graph(capability="secure"), livepeer=section)
    wait_health(url, 60)
    try:
        yield url, orchestrator
    finally:
        serve.delete("secure")
        orchestrator.stop()


def routes(url: str) -> list[tuple[str, str]]:
    """Every (method, path) the app answers, from its own OpenAPI document, plus the docs."""
    doc = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    found = [(method.upper(), path) for path, ops in doc["paths"].items() for method in ops]
    return found + [
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/redoc"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/nowhere"),
        ("DELETE", "/v1/secure"),
    ]


def test_every_route_but_health_and_ready_needs_the_token(secure):
    url, _ = secure
    checked = routes(url)
    assert {("POST", "/v1/secure"), ("POST", "/secure"), ("POST", "/image-to-image"), ("GET", "/version")} <= set(
        checked
    )
    for method, path in checked:
        if path in ("/health", "/ready"):
            continue
        for headers in BAD_TOKENS:
            reply = httpx.request(method, url + path, headers=headers, json={}, timeout=10)
            assert (reply.status_code, reply.json()) == (401, UNAUTHORIZED), (
                f"{method} {path} with {headers}: {reply.text[:200]}"
            )
            assert reply.headers["www-authenticate"] == "Bearer"
            assert_clean(reply, TOKEN, ORCH_SECRET)
    for path in ("/health", "/ready"):
        assert httpx.get(url + path, timeout=10).status_code == 200
    print(f"\n{len(checked) - 2} routes x {len(BAD_TOKENS)} missing or wrong tokens: all 401")


def test_the_right_token_opens_every_route_and_no_answer_echoes_a_secret(secure):
    url, _ = secure
    auth = {"Authorization": f"Bearer {TOKEN}"}
    job = {"inputs": {"image": data_url()}}
    answers = [
        httpx.post(url + "/v1/secure", json=job, headers=auth, timeout=30),
        httpx.post(url + "/secure", json=job, headers=auth, timeout=30),
        httpx.post(
            url + "/image-to-image",
            files={"image": ("f.png", b"not a png", "image/png")},
            data={"prompt": "x"},
            headers=auth,
            timeout=30,
        ),
        httpx.post(
            url + "/v1/secure", json={"inputs": {"image": TOKEN}}, headers=auth, timeout=30
        ),  # a secret sent as data
    ]
    answers += [
        httpx.get(url + path, headers=auth, timeout=30)
        for path in ("/v1/secure/schema", "/version", "/hardware/info", "/openapi.json", "/docs", "/health", "/ready")
    ]
    assert [a.status_code for a in answers[:2]] == [200, 200], [a.text[:200] for a in answers[:2]]
    assert answers[2].status_code == 400 and answers[3].status_code == 400
    for answer in answers:
        assert_clean(answer, TOKEN, ORCH_SECRET)
        assert not any(TOKEN in v or ORCH_SECRET in v for v in answer.headers.values())


def test_registration_carries_the_secret_and_no_log_prints_it(secure, cluster):
    url, orchestrator = secure
    registered = wait_for(lambda: orchestrator.state.capabilities.get("secure"), timeout=30)
    assert registered["token"] == TOKEN and registered["url"] == url  # what BYOC forwards jobs with
    answer = orchestrator.job("secure", {"inputs": {"image": data_url()}})
    assert answer.status_code == 200, answer.text
    time.sleep(2)  # Ray flushes replica logs to files asynchronously
    leaks = []
    for path in cluster.logs.rglob("*"):
        if not path.is_file() or path.suffix not in (".log", ".out", ".err", ".txt", ".json"):
            continue
        text = path.read_text(errors="replace")
        leaks += [
            f"{path.relative_to(cluster.logs)}: {name}"
            for name, secret in (("token", TOKEN), ("secret", ORCH_SECRET))
            if secret in text
        ]
    assert not leaks, leaks
    assert any(cluster.logs.glob("serve/replica_secure_capgraph-ingress_*.log")), (
        "the ingress log was not where expected"
    )
