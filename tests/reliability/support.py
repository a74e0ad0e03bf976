"""Shared pieces of the reliability tests: graphs, secrets, and what a good error looks like."""

from typing import Any

import httpx

from tests.conftest import GRAPHS
from tests.serve.support import frame, png_b64, wait_health  # noqa: F401 (re-exported for the tests)

HYBRID = GRAPHS / "hybrid.yaml"
ROUTE = "/v1/hybrid-depth-sdxl"
MAX_PIXELS = 128 * 128
BODY_LIMIT = 2 << 20
"""`max_body_bytes` of the hybrid app here: room for a 128 px image, small enough to exceed."""
FAST = {"generate.steps": 2, "generate.seed": 7}
TOKEN_ENV = "CAPGRAPH_RELIABILITY_TOKEN"
TOKEN = "tok-reliability-4f1c9e"
ORCH_SECRET = "orch-secret-reliability-77d2"
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages")


def good_body(seed: int = 7) -> dict[str, Any]:
    return {"inputs": {"image": png_b64(frame()), "prompt": "a castle"}, "params": FAST | {"generate.seed": seed}}


def nap_graph(replicas: int = 1, seconds: float = 0.0, capability: str = "nap") -> dict[str, Any]:
    """One sleepy node between an image input and an image output."""
    node: dict[str, Any] = {"type": "sleepy", "inputs": {"image": "image"}, "params": {"seconds": seconds}}
    if replicas > 1:
        node["replicas"] = replicas
    return {"capability": capability, "inputs": {"image": "image"}, "nodes": {"nap": node}, "outputs": {"image": "nap.image"}}


def error_of(reply: httpx.Response) -> dict[str, Any]:
    """The error object of a 4xx/5xx: capgraph's `error` or the Livepeer `detail`."""
    body = reply.json()
    found = body.get("error") or body.get("detail")
    assert isinstance(found, (dict, list)), f"{reply.status_code} without an error object: {reply.text[:300]}"
    return found[0] if isinstance(found, list) else found


def field_of(reply: httpx.Response) -> str | None:
    """The field a 4xx names: `field`, or the last element of FastAPI's `loc`."""
    error = error_of(reply)
    if "loc" in error:
        return ".".join(str(p) for p in error["loc"])
    return error.get("field")


def assert_clean(reply: httpx.Response, *secrets: str) -> None:
    """No traceback and no secret in a body, whatever its status."""
    text = reply.text
    for marker in TRACEBACK_MARKERS + secrets:
        assert marker not in text, f"{reply.request.method} {reply.request.url} answered {reply.status_code} with {marker!r}: {text[:400]}"
