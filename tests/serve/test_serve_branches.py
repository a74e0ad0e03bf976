"""graphs/hybrid-branch.yaml served on a real Ray Serve instance with tiny models: with the
`upscale` switch off the upscale deployment is not called (its replica's call count stays
put), the answer says it was skipped and has no timing for it, and the console counts it."""

import time

import httpx
import numpy as np
import pytest

from tests.conftest import GRAPHS
from tests.serve.support import calls as frames_sent
from tests.serve.support import decode_b64_png, frame, png_b64, served

pytestmark = pytest.mark.slow

ROUTE = "/v1/hybrid-branch"
FAST = {"steps": 2, "seed": 7}


@pytest.fixture(scope="module")
def branch(serve_url: str):
    with served(serve_url, str(GRAPHS / "hybrid-branch.yaml"), "branch") as url:
        yield url


def calls(deployment: str) -> int:
    return frames_sent("branch", deployment)


def ask(url: str, **params) -> httpx.Response:
    body = {"inputs": {"image": png_b64(frame()), "prompt": "a castle"}, "params": FAST | params}
    return httpx.post(url + ROUTE, json=body, timeout=120)


def test_upscale_off_skips_its_deployment(branch):
    before = {name: calls(name) for name in ("generate", "upscale", "result")}
    off = ask(branch, upscale=False)
    assert off.status_code == 200, off.text
    answer = off.json()
    assert answer["skipped"] == ["upscale"] and "upscale" not in answer["timings_ms"]
    assert decode_b64_png(answer["outputs"]["image"]).shape == (64, 64, 3)  # SDXL's frame as drawn
    assert "upscale" not in off.headers["x-capgraph-batch-sizes"]
    assert calls("upscale") == before["upscale"]  # never called
    assert calls("generate") == before["generate"] + 1 and calls("result") == before["result"] + 1

    on = ask(branch)  # the default: upscaled, as hybrid.yaml answers
    assert on.status_code == 200 and on.json()["skipped"] == [] and on.json()["timings_ms"]["upscale"] > 0
    assert decode_b64_png(on.json()["outputs"]["image"]).shape == (256, 256, 3)
    assert calls("upscale") == before["upscale"] + 1
    drawn = decode_b64_png(off.json()["outputs"]["image"])
    assert np.array_equal(drawn, decode_b64_png(ask(branch, upscale=False).json()["outputs"]["image"]))


def test_bad_switch_value_is_422_naming_it(branch):
    reply = ask(branch, upscale="no")
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "params.upscale"


def test_schema_and_console_show_the_branch(branch):
    schema = httpx.get(branch + ROUTE + "/schema", timeout=30).json()
    assert schema["params"]["upscale"]["type"] == "boolean" and schema["conditions"]["upscale"]["from"] == "params"
    ask(branch, upscale=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        live = httpx.get(branch + "/console/api/live", timeout=10)
        if live.status_code == 200 and live.json()["nodes"]["upscale"]["skipped"] >= 1:
            break
        time.sleep(0.5)
    assert live.json()["nodes"]["upscale"]["skipped"] >= 1, live.text
    graph = httpx.get(branch + "/console/api/graph", timeout=10)
    assert graph.status_code == 200 and "when upscale" in graph.text
