"""Property-based fuzz of every route in the capability's own OpenAPI document, with
schemathesis, against the tiny hybrid graph served on Ray: `/v1/{capability}`, the BYOC job
route and ai-runner's image-to-image route among them (each declares its request body).

Schemathesis reads /openapi.json (the request body there is the graph's own JSON Schema,
per media type) and generates requests that break it (negative) and requests that fit it
(positive, including real 1 px PNG, JPEG and WebP files in multipart bodies, which run the
graph). Each answer must be: below 500, with no traceback; a 4xx is JSON naming the
offending field. The one 5xx allowed is a 504 to a request that set its own deadline
(`x-capgraph-timeout-s`) and got its answer no sooner than that deadline: that is the
answer the caller asked for. Afterwards /health is 200 and a good request is served.

Derandomised, so every run sends the same requests and a failure reproduces.
"""

import hashlib
import time
from dataclasses import dataclass, field

import httpx
import pytest

from tests.reliability.support import AI_RUNNER_ROUTE, BYOC_ROUTE, ROUTE, TRACEBACK_MARKERS, good_body

schemathesis = pytest.importorskip("schemathesis", reason="the fuzz needs the test extra's schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402 (schemathesis brings hypothesis)

pytestmark = pytest.mark.slow

EXAMPLES = {"negative": 160, "positive": 100}
DEADLINE_HEADER = "x-capgraph-timeout-s"


@dataclass
class Findings:
    distinct: dict[str, int] = field(default_factory=dict)
    """Status of each distinct request sent (by a hash of method, URL, headers and body)."""
    statuses: dict[tuple[str, str, int], int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    deadline_504s: int = 0


def fuzz(url: str, mode: str, examples: int, findings: Findings) -> None:
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(httpx.get(url + "/openapi.json", timeout=30).json())
    strategy = schema.as_strategy(generation_mode=GenerationMode(mode))

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def send(case) -> None:
        start = time.monotonic()
        reply = case.call(base_url=url, timeout=60)
        took = time.monotonic() - start
        sent = reply.request
        key = hashlib.sha256(
            repr((sent.method, sent.url, sorted(sent.headers.items()), sent.body)).encode()
        ).hexdigest()
        findings.distinct[key] = reply.status_code
        where = (case.method, case.path, reply.status_code)
        findings.statuses[where] = findings.statuses.get(where, 0) + 1
        problem = judge(
            reply.status_code,
            reply.headers.get("content-type", ""),
            reply.text,
            (case.headers or {}).get(DEADLINE_HEADER),
            took,
        )
        if problem == "deadline":
            findings.deadline_504s += 1
        elif problem:
            findings.problems.append(
                f"{case.method} {case.path} -> {reply.status_code}: {problem}; sent {str(case.body)[:200]!r} "
                f"headers {case.headers}"
            )

    send()


def judge(status: int, content_type: str, text: str, deadline: str | None, took_s: float) -> str | None:
    """What is wrong with one answer (None: nothing; "deadline": the allowed 504)."""
    if any(marker in text for marker in TRACEBACK_MARKERS):
        return "traceback in the body"
    if status == 504 and deadline is not None:
        try:
            asked = float(deadline)
        except ValueError:
            return "504 to a deadline that is not a number"
        return "deadline" if took_s >= asked else "504 before the caller's deadline"
    if status >= 500:
        return "5xx"
    if 400 <= status < 500:
        if "application/json" not in content_type:
            return "4xx that is not JSON"
        import json

        body = json.loads(text)
        error = body.get("error") or body.get("detail")
        error = error[0] if isinstance(error, list) and error else error
        if not isinstance(error, dict) or not (error.get("field") or error.get("loc")):
            return "4xx that names no field"
        if not error.get("msg"):
            return "4xx with no message"
    return None


def test_fuzz_every_route_from_the_openapi_schema(hybrid):
    findings = Findings()
    start = time.monotonic()
    for mode, examples in EXAMPLES.items():
        fuzz(hybrid, mode, examples, findings)
    took = time.monotonic() - start
    summary = "\n".join(f"  {m} {p} -> {s}: {n}" for (m, p, s), n in sorted(findings.statuses.items()))
    refused = sum(1 for status in findings.distinct.values() if 400 <= status < 500)
    print(
        f"\nfuzzed {len(findings.distinct)} distinct requests ({refused} refused with a 4xx) in {took:.1f}s "
        f"({findings.deadline_504s} 504s at the caller's own deadline):\n{summary}"
    )
    assert not findings.problems, "\n".join(findings.problems[:20])
    refused = sum(1 for status in findings.distinct.values() if 400 <= status < 500)
    assert refused >= 100, f"only {refused} distinct requests were refused; the fuzz is not reaching the checks"
    for route in (ROUTE, BYOC_ROUTE, AI_RUNNER_ROUTE):  # every route that takes a job, each in its own shape
        assert any(m == "POST" and p == route and 400 <= s < 500 for m, p, s in findings.statuses), (
            f"the fuzz never reached {route}"
        )
    assert httpx.get(hybrid + "/health", timeout=10).status_code == 200
    reply = httpx.post(hybrid + ROUTE, json=good_body(), timeout=60)
    assert reply.status_code == 200, reply.text
