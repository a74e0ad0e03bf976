"""The hybrid graph (resize -> depth -> depth_control -> SDXL ControlNet -> ESRGAN) served
on a real Ray Serve instance with tiny models: answers, batching, bad input, timeouts,
health after a replica dies, and the fused graph answering the same as the unfused one."""

import asyncio
import base64
import io
import json
import time

import httpx
import numpy as np
import pytest

from tests.conftest import GRAPHS
from tests.serve.support import decode_b64_png, frame, png_b64, wait_health

pytestmark = pytest.mark.slow

HYBRID = str(GRAPHS / "hybrid.yaml")
ROUTE = "/v1/hybrid-depth-sdxl"
FAST = {"generate.steps": 2, "generate.seed": 7}
"""Two steps at 64 px keep a tiny SDXL frame near 0.1 s on two cores."""
MAX_PIXELS = 128 * 128
HYBRID_NODES = ("fit", "depth", "control", "generate", "upscale")


def request(url: str, image: np.ndarray | None = None, params: dict | None = None, **extra) -> httpx.Response:
    inputs = {"image": png_b64(frame() if image is None else image), "prompt": "a castle"}
    return httpx.post(url + ROUTE, json={"inputs": inputs, "params": FAST | (params or {})}, timeout=120, **extra)


def deploy(name: str, prefix: str, **options) -> None:
    from ray import serve

    from capgraph.serve.app import CapabilityArgs, build

    serve.run(build(CapabilityArgs(graph=HYBRID, max_pixels=MAX_PIXELS, **options)), name=name, route_prefix=prefix)


@pytest.fixture(scope="module")
def hybrid(serve_url: str):
    """The unfused hybrid app at `/`, and its answer to one fixed request."""
    from ray import serve

    start = time.monotonic()
    deploy("hybrid", "/", fuse="none")  # one deployment per node: the tests kill one and batch across hops
    print(
        f"\nhybrid graph RUNNING (every node loaded and warm) {time.monotonic() - start:.1f}s after serve.operate.run"
    )
    wait_health(serve_url, 30)
    reference = request(serve_url)
    assert reference.status_code == 200, reference.text
    yield serve_url, reference.json()
    if "hybrid" in serve.status().applications:
        serve.delete("hybrid")


def test_answers_a_frame(hybrid):
    url, answer = hybrid
    image = decode_b64_png(answer["outputs"]["image"])
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8  # 64 px in, ESRGAN x4 out
    assert {"fit", "depth", "control", "generate", "upscale", "total"} <= answer["timings_ms"].keys()
    again = request(url)  # stateless and repeatable: the same frame and seed give the same image
    assert np.array_equal(decode_b64_png(again.json()["outputs"]["image"]), image)
    assert again.headers["x-capgraph-batch-sizes"] == "fit=1,depth=1,control=1,generate=1,upscale=1"


def test_a_caller_can_see_where_the_time_went(hybrid):
    """`x-capgraph-trace: 1` answers with each stage of the request's wall time, from the
    timestamps the frame carried through the ingress and the five node replicas."""
    url, _ = hybrid
    assert "x-capgraph-trace" not in request(url).headers  # only when asked
    sent = time.time()
    reply = request(url, headers={"x-capgraph-trace": "1"})
    received = time.time()
    trace = json.loads(reply.headers["x-capgraph-trace"])
    stages = {k: v for k, v in trace.items() if k.endswith("_ms")}
    assert set(stages) == {
        "decode_ms", "checks_ms", "hop_ms", "batch_wait_ms", "nodes_ms",
        "replica_other_ms", "back_ms", "encode_ms", "other_ms",
    }  # fmt: skip
    assert sent <= trace["entered"] <= trace["finished"] <= received
    # a chain of units: every stage is time spent, and they add up to the route's time
    assert all(v >= -1.0 for v in stages.values()) and abs(stages["other_ms"]) < 1.0
    assert sum(stages.values()) == pytest.approx((trace["finished"] - trace["entered"]) * 1000, abs=0.5)
    timings = reply.json()["timings_ms"]
    assert stages["nodes_ms"] == pytest.approx(sum(timings[n] for n in HYBRID_NODES), abs=0.5)


def test_accept_asks_for_the_image_itself(hybrid):
    """A caller that wants the picture, not JSON, says so in `Accept` and gets the bytes:
    no base64, no JSON, the timings in a header."""
    from PIL import Image

    url, answer = hybrid
    reply = request(url, headers={"accept": "image/webp"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/webp"
    picture = np.asarray(Image.open(io.BytesIO(reply.content)).convert("RGB"))
    reference = decode_b64_png(answer["outputs"]["image"])
    assert picture.shape == reference.shape
    assert np.abs(picture.astype(int) - reference.astype(int)).mean() < 12  # lossy, but the same picture
    timings = dict(pair.split("=") for pair in reply.headers["x-capgraph-timings-ms"].split(","))
    assert set(HYBRID_NODES) | {"total"} <= timings.keys()
    png = request(url, headers={"accept": "image/png"})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), reference)  # lossless: the same pixels


def test_concurrent_requests_share_batches(hybrid):
    url, _ = hybrid
    body = {"inputs": {"image": png_b64(frame()), "prompt": "a castle"}, "params": FAST}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(url + ROUTE, json=body) for _ in range(8)))

    answers = asyncio.run(burst())
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    sizes = [dict(pair.split("=") for pair in a.headers["x-capgraph-batch-sizes"].split(",")) for a in answers]
    largest = {node: max(int(s[node]) for s in sizes) for node in sizes[0]}
    print(f"\nlargest batch per node over 8 concurrent requests: {largest}")
    assert largest["generate"] >= 2 and largest["depth"] >= 2, largest
    assert all(a.json()["timings_ms"]["generate"] > 0 for a in answers)


def test_multipart_form(hybrid):
    url, answer = hybrid
    files = {"image": ("frame.png", base64.b64decode(png_b64(frame())), "image/png")}
    data = {"prompt": "a castle", "params": json.dumps(FAST)}
    reply = httpx.post(url + ROUTE, files=files, data=data, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"]["image"] == answer["outputs"]["image"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"inputs": {"prompt": "x"}}, 422, "inputs.image"),
        ({"inputs": {"image": "not base64!"}}, 400, "inputs.image"),
        ({"inputs": {"image": base64.b64encode(b"GIF89a not really").decode()}}, 400, "inputs.image"),
        ({"inputs": {"image": png_b64(frame()), "prompt": 5}}, 422, "inputs.prompt"),
        ({"inputs": {"image": png_b64(frame(200, 100))}}, 413, "inputs.image"),
        ({"inputs": {"image": png_b64(frame()), "colour": "red"}}, 422, "inputs.colour"),
        ({"inputs": {"image": png_b64(frame())}, "params": {"generate.nope": 1}}, 422, "params.generate.nope"),
        ({"inputs": {"image": png_b64(frame())}, "params": {"generate.model": "x/y"}}, 422, "params.generate.model"),
        ({"inputs": {"image": png_b64(frame())}, "params": {"generate.steps": 0}}, 422, "params.generate.steps"),
        ({"inputs": {"image": png_b64(frame())}, "extra": 1}, 400, "extra"),
    ],
    ids=[
        "missing",
        "not-base64",
        "undecodable",
        "wrong-type",
        "too-large",
        "unknown-input",
        "unknown-param",
        "fixed-param",
        "param-range",
        "unknown-field",
    ],
)
def test_bad_input_is_4xx_naming_the_field(hybrid, body, status, field):
    url, _ = hybrid
    reply = httpx.post(url + ROUTE, json=body, timeout=60)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["field"] == field


def test_malformed_json_and_bad_headers(hybrid):
    url, _ = hybrid
    reply = httpx.post(url + ROUTE, content=b"{nope", headers={"content-type": "application/json"}, timeout=30)
    assert (reply.status_code, reply.json()["error"]["field"]) == (400, "body")
    reply = request(url, headers={"x-capgraph-timeout-s": "soon"})
    assert (reply.status_code, reply.json()["error"]["field"]) == (400, "headers.x-capgraph-timeout-s")


def test_schema_and_docs(hybrid):
    url, _ = hybrid
    schema = httpx.get(url + ROUTE + "/schema", timeout=30).json()
    assert schema["inputs"]["image"]["required"] and not schema["inputs"]["prompt"]["required"]
    assert schema["params"]["generate.steps"]["default"] == 30 and "generate.model" not in schema["params"]
    assert schema["outputs"]["image"]["type"] == "image"
    assert httpx.get(url + "/docs", timeout=30).status_code == 200
    assert ROUTE in httpx.get(url + "/openapi.json", timeout=30).json()["paths"]


def test_timeout_answers_504(hybrid):
    url, _ = hybrid
    start = time.monotonic()
    reply = request(url, params={"generate.steps": 40}, headers={"x-capgraph-timeout-s": "0.3"})
    assert reply.status_code == 504, reply.text
    assert time.monotonic() - start < 5


def test_health_drops_when_a_node_dies_and_comes_back(hybrid):
    import ray

    url, answer = hybrid
    wait_health(url, 60)  # the timed-out 40-step frame may still be finishing
    name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "::hybrid#generate#" in a["name"])
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    seen = wait_health(url, 30, until=503, interval_s=0.1)
    body = httpx.get(url + "/health", timeout=10).json()
    assert body["nodes"]["generate"] != "ok" and body["nodes"]["depth"] == "ok", body
    seen += wait_health(url, 120)  # Ray starts a new replica; it loads and warms before 200
    assert seen[-1] == 200 and 503 in seen
    assert request(url).json()["outputs"]["image"] == answer["outputs"]["image"]


def test_node_metrics_reach_prometheus(hybrid, cluster):
    """Latency, batch size and queue length per node, as Ray Serve custom metrics (Ray
    exports them every few seconds; earlier tests have sent plenty of frames)."""
    wanted = (
        "ray_capgraph_node_latency_ms_bucket",
        "ray_capgraph_node_batch_size_bucket",
        "ray_capgraph_node_queue_length",
    )
    deadline, text = time.monotonic() + 40, ""
    while time.monotonic() < deadline:
        text = httpx.get(cluster.metrics_url, timeout=10).text
        if all(name in text for name in wanted):
            break
        time.sleep(1)
    lines = [line for line in text.splitlines() if line.startswith("ray_capgraph_node_batch_size_bucket")]
    assert any('node="generate"' in line and 'capability="hybrid-depth-sdxl"' in line for line in lines), text[-2000:]
    assert all(name in text for name in wanted)


def test_fused_graph_answers_the_same(hybrid):
    from ray import serve

    url, answer = hybrid
    serve.delete("hybrid")  # its GPU fractions would leave no room on the one (faked) GPU
    deploy("hybrid-fused", "/fused", fuse="all")
    try:
        status = serve.status().applications["hybrid-fused"]
        assert set(status.deployments) == {"hybrid_depth_sdxl", "capgraph-ingress"}
        reply = request(url + "/fused")
        assert reply.status_code == 200, reply.text
        fused, unfused = decode_b64_png(reply.json()["outputs"]["image"]), decode_b64_png(answer["outputs"]["image"])
        assert np.abs(fused.astype(int) - unfused.astype(int)).max() <= 1
        assert "fit.queue" in reply.json()["timings_ms"] and "depth.queue" not in reply.json()["timings_ms"]
    finally:
        serve.delete("hybrid-fused")
