"""Helpers for the Serve tests: free ports, PNG payloads, polling /health."""

import base64
import contextlib
import io
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def frame(width: int = 64, height: int = 64, seed: int = 0) -> np.ndarray:
    """A small RGB frame with some structure (a gradient plus a square), deterministic."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    image = np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 90 + seed)], axis=-1)
    image[height // 4 : height // 2, width // 4 : width // 2] = 255
    return image.astype(np.uint8)


def png_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_b64_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def wait_health(url: str, timeout_s: float, until: int = 200, interval_s: float = 0.25) -> list[int]:
    """Poll `url/health` until it answers `until`; returns every status seen (0 = no answer)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}/health", timeout=5).status_code
        except httpx.HTTPError:
            status = 0
        seen.append(status)
        if status == until:
            return seen
        time.sleep(interval_s)
    raise AssertionError(f"{url}/health did not answer {until} within {timeout_s}s; saw {sorted(set(seen))}")


@contextlib.contextmanager
def served(serve_url: str, graph: str, name: str, **args: Any) -> Iterator[str]:
    """`graph` built as `serve run` builds it, at `/<name>` on the shared Ray instance, with
    unfused nodes (one deployment each, so a test can count what each was sent); its URL."""
    from ray import serve

    from capgraph.serve.app import CapabilityArgs, build

    built = build(CapabilityArgs(graph=graph, max_pixels=128 * 128, fuse="none", **args))
    serve.run(built, name=name, route_prefix=f"/{name}")
    try:
        wait_health(f"{serve_url}/{name}", 60)
        yield f"{serve_url}/{name}"
    finally:
        serve.delete(name)


def calls(app: str, deployment: str) -> int:
    """Frames the deployment's replica was sent, as it reports to /health (`UnitReplica.state`)."""
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=app).state.remote().result()["calls"]
