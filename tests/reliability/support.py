"""Shared pieces of the reliability tests: graphs, secrets, deploying, and what a good error looks like."""

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import GRAPHS
from tests.livepeer.lp_support import ORCH_SECRET  # noqa: F401 (what the fake orchestrator checks)
from tests.serve.support import frame, png_b64, wait_health  # noqa: F401 (re-exported for the tests)

HYBRID = GRAPHS / "hybrid.yaml"
ROUTE = "/v1/hybrid-depth-sdxl"
BYOC_ROUTE = "/hybrid-depth-sdxl"
AI_RUNNER_ROUTE = "/image-to-image"
LIVEPEER = {
    "routes": {
        "image-to-image": {
            "image": "image",
            "prompt": "prompt",
            "negative_prompt": "generate.negative_prompt",
            "seed": "generate.seed",
            "num_inference_steps": "generate.steps",
            "guidance_scale": "generate.guidance",
            "images": "image",
        }
    }
}
"""The hybrid app's Livepeer section: ai-runner's image-to-image route beside the BYOC job
route, so the bad-request corpus and the fuzz reach every route that takes a job."""
MAX_PIXELS = 128 * 128
BODY_LIMIT = 2 << 20
"""`max_body_bytes` of the hybrid app here: room for a 128 px image, small enough to exceed."""
FAST = {"generate.steps": 2, "generate.seed": 7}
TOKEN_ENV = "CAPGRAPH_RELIABILITY_TOKEN"
TOKEN = "tok-reliability-4f1c9e"
CPU = 0.25
"""CPU a node replica asks for here: the planner would size replicas to the whole cluster."""
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages")


@dataclass(frozen=True)
class Cluster:
    url: str
    """Serve's HTTP proxy on 127.0.0.1."""
    logs: Path
    """This Ray session's log folder (every replica's log file is under it)."""


def deploy(name: str, prefix: str, graph: dict[str, Any] | str, timeout_s: float = 180.0, **options: Any) -> None:
    """`serve.operate.run` of a capgraph app through the same builder `serve run` uses; fails
    (instead of waiting for ever) when it is not running within `timeout_s`."""
    from ray import serve

    from capgraph.serve.app import CapabilityArgs, build

    app = build(CapabilityArgs(graph=graph, tuned=False, **options))
    done, errors = threading.Event(), []

    def run() -> None:
        try:
            serve.run(app, name=name, route_prefix=prefix)
        except BaseException as exc:  # handed to the test below
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    if not done.wait(timeout_s):
        raise AssertionError(
            f"app '{name}' is not running {timeout_s:g}s after serve.operate.run: "
            f"{serve.status().applications.get(name)}"
        )
    if errors:
        raise errors[0]


def hybrid_graph(**changes: Any) -> dict[str, Any]:
    """The hybrid graph's sections with one replica and a quarter CPU per node, so each node
    has its own replica to kill or update (the planner would fuse this graph into one
    deployment) and every app of these tests fits the cluster at once. `changes` replace
    top-level sections (e.g. `version`)."""
    from capgraph.engine.yamlload import load_yaml, plain

    tree = plain(load_yaml(HYBRID.read_text(encoding="utf-8")))
    graph = {key: tree[key] for key in ("capability", "version", "description", "inputs", "nodes", "outputs")} | changes
    for node in graph["nodes"].values():
        node.update(replicas=1, resources={"cpu": CPU})
    graph["nodes"]["generate"]["params"]["steps"] = 2  # a request that sets none (the fuzz's) stays quick too
    return graph


def good_body(seed: int = 7) -> dict[str, Any]:
    return {"inputs": {"image": png_b64(frame()), "prompt": "a castle"}, "params": FAST | {"generate.seed": seed}}


def nap_graph(replicas: int = 1, seconds: float = 0.0, capability: str = "nap") -> dict[str, Any]:
    """One sleepy node between an image input and an image output."""
    node: dict[str, Any] = {
        "type": "sleepy",
        "inputs": {"image": "image"},
        "params": {"seconds": seconds},
        "replicas": replicas,
        "resources": {"cpu": CPU},
    }
    return {
        "capability": capability,
        "inputs": {"image": "image"},
        "nodes": {"nap": node},
        "outputs": {"image": "nap.image"},
    }


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
        assert marker not in text, (
            f"{reply.request.method} {reply.request.url} answered {reply.status_code} with {marker!r}: {text[:400]}"
        )


async def probe_health(
    url: str,
    start: float,
    probes: list[tuple[float, int, str]],
    going: Callable[[], bool],
    every_s: float = 0.2,
    timeout_s: float = 5.0,
) -> None:
    """GET `url`/health while `going()`, noting (seconds since `start`, status, body) each
    time; status 0 where no answer came."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        while going():
            try:
                reply = await client.get(url + "/health")
                probes.append((time.monotonic() - start, reply.status_code, reply.text))
            except httpx.HTTPError as exc:
                probes.append((time.monotonic() - start, 0, repr(exc)))
            await asyncio.sleep(every_s)
