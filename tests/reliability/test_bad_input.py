"""A hand-written corpus of bad requests, for what fuzzers rarely find, sent over HTTP to the
tiny hybrid graph served on Ray: each gets a 4xx JSON naming the field with a message a
person understands, the capability stays healthy, and the next good request is served.

Also over HTTP: a request can set only the params the graph declares, never a model id or
path, a device, a dtype or `trust_remote_code`; and a request never gets YAML parsed. The
graph files themselves load with safe YAML and an alias bound (checked at build time).
"""

import base64
import json
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest

from tests.conftest import BAD_GRAPHS
from tests.reliability.support import (
    AI_RUNNER_ROUTE,
    BODY_LIMIT,
    BYOC_ROUTE,
    FAST,
    ROUTE,
    assert_clean,
    error_of,
    field_of,
    frame,
    good_body,
    png_b64,
    wait_health,
)

pytestmark = pytest.mark.slow

PNG = base64.b64decode(png_b64(frame(32, 32)))
IMAGE = png_b64(frame(32, 32))
DEADLINE = "x-capgraph-timeout-s"


@dataclass(frozen=True)
class Bad:
    name: str
    status: int
    field: str
    says: str
    """A fragment of the message, the words a person would look for."""
    json: Any = None
    content: bytes | Iterable[bytes] | None = None
    files: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = ROUTE


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with no pixel data behind it: a decompression
    bomb's first bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def inputs(**values: Any) -> dict[str, Any]:
    return {"inputs": {"image": IMAGE} | values, "params": FAST}


def params(**values: Any) -> dict[str, Any]:
    return {"inputs": {"image": IMAGE}, "params": FAST | values}


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "capgraph") -> tuple[bytes, dict[str, str]]:
    """A multipart body by hand: (name, filename or None, bytes) per part."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), {"content-type": f"multipart/form-data; boundary={boundary}"}


@dataclass(frozen=True)
class chunks:  # noqa: N801 (reads as the body it is)
    """A body sent chunked (no Content-Length), `total` bytes of it; sendable more than once."""

    total: int

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.total // 65536):
            yield b" " * 65536


no_filename, no_filename_headers = multipart([("image", None, PNG), ("prompt", None, b"a castle")])
no_name, no_name_headers = multipart([("", "frame.png", PNG)])
twice, twice_headers = multipart([("image", "a.png", PNG), ("image", "b.png", PNG)])
deep_params = {"inputs": {"image": IMAGE}, "params": {"generate.controlnet_scales": json.loads("[" * 40 + "]" * 40)}}
billion_laughs = (BAD_GRAPHS / "bad_billion_laughs.yaml").read_bytes()

CORPUS = [
    # size and shape of the body
    Bad(
        "body over max_body_bytes",
        413,
        "body",
        "over the limit",
        content=b"{" + b" " * (BODY_LIMIT + 10) + b"}",
        headers={"content-type": "application/json"},
    ),
    Bad(
        "chunked body over max_body_bytes",
        413,
        "body",
        "over the limit",
        content=chunks(BODY_LIMIT + (1 << 20)),
        headers={"content-type": "application/json"},
    ),
    Bad(
        "deeply nested JSON",
        400,
        "body",
        "nested too deeply",
        content=b"[" * 50_000 + b"]" * 50_000,
        headers={"content-type": "application/json"},
    ),
    Bad(
        "nesting past 32 levels in a param",
        400,
        "params.generate.controlnet_scales",
        "nested deeper than 32",
        json=deep_params,
    ),
    Bad(
        "not JSON",
        400,
        "body",
        "not valid JSON",
        content=b"{inputs: image}",
        headers={"content-type": "application/json"},
    ),
    Bad(
        "not UTF-8",
        400,
        "body",
        "not UTF-8",
        content=b'{"inputs": {"prompt": "\xc3\x28"}}',
        headers={"content-type": "application/json"},
    ),
    Bad("a JSON array", 400, "body", "expected a JSON object", json=[IMAGE]),
    Bad("a JSON string", 400, "body", "expected a JSON object", json="image"),
    Bad(
        "empty body",
        422,
        "inputs.image",
        "required input (Image) is missing",
        content=b"",
        headers={"content-type": "application/json"},
    ),
    Bad("unknown top-level field", 400, "image", "unknown field", json={"inputs": {}, "image": IMAGE}),
    Bad("inputs as a list", 400, "inputs", "expected an object", json={"inputs": [IMAGE]}),
    Bad(
        "params as a string",
        400,
        "params",
        "'node.param': value",
        json={"inputs": {"image": IMAGE}, "params": "steps=2"},
    ),
    # content types and methods
    Bad(
        "text/plain body",
        415,
        "headers.content-type",
        "send application/json or multipart/form-data",
        content=json.dumps(good_body()).encode(),
        headers={"content-type": "text/plain"},
    ),
    Bad(
        "form-urlencoded body (curl -d)",
        415,
        "headers.content-type",
        "application/x-www-form-urlencoded",
        content=b"image=abc",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    Bad(
        "a YAML body (billion laughs)",
        415,
        "headers.content-type",
        "application/yaml",
        content=billion_laughs,
        headers={"content-type": "application/yaml"},
    ),
    Bad("GET on the run route", 405, "method", "use POST", method="GET"),
    Bad("PUT on the run route", 405, "method", "use POST", method="PUT", json=good_body()),
    Bad("DELETE on the run route", 405, "method", "use POST", method="DELETE"),
    Bad("POST on /health", 405, "method", "use GET", path="/health", json={}),
    Bad("POST on the schema route", 405, "method", "use GET", path=ROUTE + "/schema", json={}),
    Bad("a route that does not exist", 404, "path", "no route", path="/v1/nope", json={}),
    Bad("a path traversal", 404, "path", "no route", method="GET", path="/v1/../../etc/passwd"),
    # images
    Bad(
        "header claiming 12000x10000 pixels",
        413,
        "inputs.image",
        "12000x10000",
        json=inputs(image=base64.b64encode(png_claiming(12000, 10000)).decode()),
    ),
    Bad(
        "header claiming 60000x60000 pixels",
        413,
        "inputs.image",
        "decompression bomb",
        json=inputs(image=base64.b64encode(png_claiming(60000, 60000)).decode()),
    ),
    Bad(
        "truncated PNG",
        400,
        "inputs.image",
        "not a decodable image",
        json=inputs(image=base64.b64encode(PNG[: len(PNG) // 2]).decode()),
    ),
    Bad(
        "PNG signature and nothing else",
        400,
        "inputs.image",
        "not a decodable image",
        json=inputs(image=base64.b64encode(PNG[:8]).decode()),
    ),
    Bad(
        "a GIF",
        415,
        "inputs.image",
        "send PNG, JPEG or WebP",
        json=inputs(
            image=base64.b64encode(
                b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x00\x00\x00\x00\x00,"
                b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
            ).decode()
        ),
    ),
    Bad("an image over max_pixels", 413, "inputs.image", "over the limit", json=inputs(image=png_b64(frame(200, 100)))),
    Bad(
        "base64 of more bytes than any allowed image",
        413,
        "inputs.image",
        "larger than any image",
        json=inputs(image="A" * (BODY_LIMIT - 1024)),
    ),
    Bad(
        "base64 with characters outside the alphabet",
        400,
        "inputs.image",
        "not valid base64",
        json=inputs(image=IMAGE[:40] + "*&^%" + IMAGE[40:]),
    ),
    Bad(
        "a data: URL of text/plain",
        415,
        "inputs.image",
        "text/plain",
        json=inputs(image="data:text/plain;base64," + IMAGE),
    ),
    Bad(
        "a data: URL of application/pdf",
        415,
        "inputs.image",
        "application/pdf",
        json=inputs(image="data:application/pdf;base64," + IMAGE),
    ),
    Bad("a data: URL not base64", 400, "inputs.image", "must be base64", json=inputs(image="data:image/png," + IMAGE)),
    Bad("a file path instead of an image", 400, "inputs.image", "not valid base64", json=inputs(image="/etc/passwd")),
    Bad(
        "a file: URL instead of an image",
        400,
        "inputs.image",
        "not valid base64",
        json=inputs(image="file:///etc/passwd"),
    ),
    Bad(
        "an http URL instead of an image",
        400,
        "inputs.image",
        "not valid base64",
        json=inputs(image="http://169.254.169.254/latest"),
    ),
    Bad("an image as a number", 422, "inputs.image", "got integer", json=inputs(image=12)),
    Bad("an image as an object", 422, "inputs.image", "got object", json=inputs(image={"path": "/etc/passwd"})),
    Bad(
        "multipart image part with no filename",
        400,
        "inputs.image",
        "file part (with a filename)",
        content=no_filename,
        headers=no_filename_headers,
    ),
    Bad("multipart part with no name", 400, "body", "name", content=no_name, headers=no_name_headers),
    Bad("multipart part sent twice", 400, "inputs.image", "more than once", content=twice, headers=twice_headers),
    Bad(
        "multipart with no boundary",
        400,
        "body",
        "multipart",
        content=b"--x\r\n\r\n",
        headers={"content-type": "multipart/form-data"},
    ),
    Bad(
        "multipart text file for a text input",
        422,
        "inputs.prompt",
        "file was sent",
        files={"image": ("f.png", PNG, "image/png"), "prompt": ("p.txt", b"a castle", "text/plain")},
    ),
    # text and numbers
    Bad("a 100 kB prompt", 422, "inputs.prompt", "over the limit of 10,000", json=inputs(prompt="a castle " * 11_400)),
    Bad("a prompt as a number", 422, "inputs.prompt", "expected a string", json=inputs(prompt=42)),
    Bad("an unknown input", 422, "inputs.mask", "has no input 'mask'", json=inputs(mask=IMAGE)),
    Bad(
        "steps as a string", 422, "params.generate.steps", 'send 20, not "20"', json=params(**{"generate.steps": "20"})
    ),
    Bad("seed as a string", 422, "params.generate.seed", "got string", json=params(**{"generate.seed": "7"})),
    Bad(
        "steps as NaN",
        400,
        "params.generate.steps",
        "NaN is not a number",
        content=b'{"inputs": {}, "params": {"generate.steps": NaN}}',
        headers={"content-type": "application/json"},
    ),
    Bad(
        "guidance as Infinity",
        400,
        "params.generate.guidance",
        "Infinity",
        content=f'{{"inputs": {{"image": "{IMAGE}"}}, "params": {{"generate.guidance": Infinity}}}}'.encode(),
        headers={"content-type": "application/json"},
    ),
    Bad(
        "strength as -Infinity",
        400,
        "params.generate.strength",
        "-Infinity",
        content=b'{"params": {"generate.strength": -Infinity}}',
        headers={"content-type": "application/json"},
    ),
    Bad(
        "negative steps",
        422,
        "params.generate.steps",
        "greater than or equal to 1",
        json=params(**{"generate.steps": -5}),
    ),
    Bad("zero steps", 422, "params.generate.steps", "greater than or equal to 1", json=params(**{"generate.steps": 0})),
    Bad(
        "huge steps",
        422,
        "params.generate.steps",
        "less than or equal to 100",
        json=params(**{"generate.steps": 10**12}),
    ),
    Bad("fractional steps", 422, "params.generate.steps", "whole number", json=params(**{"generate.steps": 2.5})),
    Bad(
        "negative strength",
        422,
        "params.generate.strength",
        "greater than or equal to 0",
        json=params(**{"generate.strength": -0.1}),
    ),
    Bad(
        "huge strength",
        422,
        "params.generate.strength",
        "less than or equal to 1",
        json=params(**{"generate.strength": 1e300}),
    ),
    Bad(
        "zero width", 422, "params.generate.width", "greater than or equal to 64", json=params(**{"generate.width": 0})
    ),
    Bad("negative height", 422, "params.fit.height", "greater than or equal to 8", json=params(**{"fit.height": -64})),
    Bad(
        "huge width",
        422,
        "params.generate.width",
        "less than or equal to 2048",
        json=params(**{"generate.width": 1 << 40}),
    ),
    Bad(
        "a size over max_pixels",
        413,
        "params.generate.width",
        "over this capability's limit",
        json=params(**{"generate.width": 2048, "generate.height": 2048}),
    ),
    Bad(
        "a width not a multiple of 8",
        422,
        "params.generate.width",
        "multiple of 8",
        json=params(**{"generate.width": 65}),
    ),
    Bad(
        "an unknown param",
        422,
        "params.generate.stepz",
        "Did you mean 'generate.steps'",
        json=params(**{"generate.stepz": 2}),
    ),
    Bad(
        "a param of a node that does not exist",
        422,
        "params.refiner.steps",
        "unknown param",
        json=params(**{"refiner.steps": 2}),
    ),
    Bad("a param with no node", 422, "params.steps", "unknown param", json=params(steps=2)),
    Bad("a bad scheduler name", 422, "params.fit.fit", "crop", json=params(**{"fit.fit": "zoom"})),
    Bad(
        "wrong number of ControlNet scales",
        422,
        "params.generate.controlnet_scales",
        "controlnet_scales has 2 values",
        json={"inputs": {"image": IMAGE}, "params": {"generate.controlnet_scales": [0.5, 0.5]}},
    ),
    # headers
    Bad(
        "a deadline that is not a number",
        400,
        "headers.x-capgraph-timeout-s",
        "not a number of seconds",
        json=good_body(),
        headers={"x-capgraph-timeout-s": "soon"},
    ),
    Bad(
        "a negative deadline",
        400,
        "headers.x-capgraph-timeout-s",
        "positive number",
        json=good_body(),
        headers={"x-capgraph-timeout-s": "-1"},
    ),
    Bad(
        "a NaN deadline",
        400,
        "headers.x-capgraph-timeout-s",
        "positive number",
        json=good_body(),
        headers={"x-capgraph-timeout-s": "nan"},
    ),
]

# Nothing a request sends can load a model or read a file: each of these names the param.
FORBIDDEN = {
    "generate.model": "stabilityai/sdxl-turbo",
    "generate.vae": "/etc/passwd",
    "generate.controlnets": [{"model": "../../weights", "scale": 1.0}],
    "generate.scheduler": "euler",
    "depth.model": "/root/.cache/huggingface",
    "upscale.method": "sd_x4",
    "upscale.model": "file:///etc/shadow",
    "fit.max_side": 8192,
    "generate.device": "cuda:0",
    "generate.dtype": "float64",
    "depth.trust_remote_code": True,
    "generate.local_files_only": False,
    "generate.cache_dir": "/tmp",
    "generate.revision": "main",
}


def send(url: str, bad: Bad) -> httpx.Response:
    return httpx.request(
        bad.method,
        url + bad.path,
        json=bad.json,
        content=bad.content,
        files=bad.files,
        data=bad.data,
        headers=bad.headers,
        timeout=60,
    )


@pytest.mark.parametrize("bad", CORPUS, ids=[b.name for b in CORPUS])
def test_bad_request_gets_a_4xx_naming_the_field(hybrid, bad):
    start = time.monotonic()
    reply = send(hybrid, bad)
    took = time.monotonic() - start
    assert reply.status_code == bad.status, f"{bad.name}: {reply.status_code} {reply.text[:300]}"
    assert field_of(reply) == bad.field, reply.text[:300]
    message = error_of(reply)["msg"]
    assert bad.says in message, f"{bad.name}: {message!r} does not say {bad.says!r}"
    assert 10 <= len(message) <= 600, message
    assert_clean(reply)
    assert took < 10, f"{bad.name} took {took:.1f}s to refuse"


BYOC_CORPUS = [replace(bad, path=BYOC_ROUTE) for bad in CORPUS if bad.path == ROUTE and DEADLINE not in bad.headers]
"""The corpus sent to the BYOC job route instead: every job route reads a job the same way
(the deadline header is /v1's own)."""


@pytest.mark.parametrize("bad", BYOC_CORPUS, ids=[b.name for b in BYOC_CORPUS])
def test_the_byoc_job_route_answers_the_corpus_as_v1_does(hybrid, bad):
    reply = send(hybrid, bad)
    assert reply.status_code == bad.status, f"{bad.name}: {reply.status_code} {reply.text[:300]}"
    assert "detail" in reply.json(), reply.text[:300]  # the Livepeer error shape
    assert field_of(reply) == bad.field, reply.text[:300]
    assert bad.says in error_of(reply)["msg"]
    assert_clean(reply)


def ai_runner(fields: dict[str, str] | None = None, image: bytes | None = PNG, **changes: Any) -> Bad:
    """A bad ai-runner image-to-image request: a multipart form as the SDK sends it (with
    a part the route ignores where there is no image, so it stays multipart)."""
    files = (
        {"image": ("in.png", image, "image/png")}
        if image is not None
        else {"note": ("note.txt", b"ignored", "text/plain")}
    )
    return Bad(
        path=AI_RUNNER_ROUTE,
        files=files,
        data={"prompt": "a castle", "num_inference_steps": "2"} | (fields or {}),
        **changes,
    )


AI_RUNNER_CORPUS = [
    ai_runner(name="no image", image=None, status=422, field="body.image", says="Field required"),
    ai_runner(
        {"image": "aGVsbG8="},
        name="the image as a text field",
        image=None,
        status=422,
        field="body.image",
        says="UploadFile",
    ),
    ai_runner(
        {"seed": "seven"}, name="a seed that is not a number", status=422, field="body.seed", says="valid integer"
    ),
    ai_runner({"guidance_scale": "NaN"}, name="guidance as NaN", status=400, field="guidance_scale", says="finite"),
    ai_runner(
        {"num_inference_steps": "0"}, name="zero steps", status=400, field="num_inference_steps", says="generate.steps"
    ),
    ai_runner(
        {"num_inference_steps": "1000000"},
        name="huge steps",
        status=400,
        field="num_inference_steps",
        says="less than or equal to 100",
    ),
    ai_runner(
        {"num_images_per_prompt": "0"},
        name="no images asked for",
        status=400,
        field="num_images_per_prompt",
        says="between 1 and 16",
    ),
    ai_runner(
        {"num_images_per_prompt": "1000"},
        name="a thousand images asked for",
        status=400,
        field="num_images_per_prompt",
        says="between 1 and 16",
    ),
    ai_runner(
        {"model_id": "timbrooks/instruct-pix2pix"},
        name="another model",
        status=400,
        field="model_id",
        says="pipeline configured with",
    ),
    ai_runner(
        {"prompt": "a castle " * 11_400},
        name="a 100 kB prompt",
        status=400,
        field="prompt",
        says="over the limit of 10,000",
    ),
    ai_runner(
        name="a truncated PNG", image=PNG[: len(PNG) // 2], status=400, field="image", says="not a decodable image"
    ),
    ai_runner(
        name="a header claiming 60000x60000 pixels",
        image=png_claiming(60000, 60000),
        status=413,
        field="image",
        says="decompression bomb",
    ),
    ai_runner(
        name="an image over max_pixels",
        image=base64.b64decode(png_b64(frame(200, 100))),
        status=413,
        field="image",
        says="over the limit",
    ),
    ai_runner(
        name="a body over max_body_bytes",
        image=PNG + b"\0" * BODY_LIMIT,
        status=413,
        field="body",
        says="over the limit",
    ),
    Bad("a JSON body instead of a form", 422, "body.prompt", "Field required", json=good_body(), path=AI_RUNNER_ROUTE),
    Bad(
        "a part sent twice", 400, "image", "more than once", content=twice, headers=twice_headers, path=AI_RUNNER_ROUTE
    ),
    Bad(
        "multipart with no boundary",
        400,
        "body",
        "multipart",
        content=b"--x\r\n\r\n",
        headers={"content-type": "multipart/form-data"},
        path=AI_RUNNER_ROUTE,
    ),
    Bad("GET on the route", 405, "method", "use POST", method="GET", path=AI_RUNNER_ROUTE),
]
"""Bad requests to ai-runner's image-to-image route: each a 4xx in ai-runner's shape
(`detail.msg`, or FastAPI's `detail` list where ai-runner answers 422) naming the field."""


@pytest.mark.parametrize("bad", AI_RUNNER_CORPUS, ids=[b.name for b in AI_RUNNER_CORPUS])
def test_the_ai_runner_route_refuses_bad_requests_naming_the_field(hybrid, bad):
    reply = send(hybrid, bad)
    assert reply.status_code == bad.status, f"{bad.name}: {reply.status_code} {reply.text[:300]}"
    assert field_of(reply) == bad.field, reply.text[:300]
    assert bad.says in error_of(reply)["msg"], reply.text[:300]
    assert_clean(reply)


@pytest.mark.parametrize("param", sorted(FORBIDDEN))
def test_no_request_can_set_what_loads_a_model_or_reads_a_file(hybrid, param):
    reply = httpx.post(hybrid + ROUTE, json=params(**{param: FORBIDDEN[param]}), timeout=60)
    assert reply.status_code == 422, reply.text
    assert field_of(reply) == f"params.{param}"
    message = error_of(reply)["msg"]
    assert "fixed by the graph" in message or "unknown param" in message, message


def test_the_livepeer_job_route_refuses_the_same_json(hybrid):
    """The BYOC job route reads the same JSON: NaN and deep nesting are 400s there too."""
    url = hybrid + "/hybrid-depth-sdxl"
    nan = httpx.post(
        url,
        content=b'{"inputs": {}, "params": {"generate.steps": NaN}}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    deep = httpx.post(
        url, content=b"[" * 50_000 + b"]" * 50_000, headers={"content-type": "application/json"}, timeout=30
    )
    model = httpx.post(url, json={"inputs": {"image": IMAGE}, "params": {"generate.model": "x/y"}}, timeout=30)
    for reply, status in ((nan, 400), (deep, 400), (model, 422)):
        assert reply.status_code == status and reply.json()["detail"]["field"], reply.text[:300]
        assert_clean(reply)


def test_still_healthy_and_serving_after_the_corpus(hybrid):
    """Runs after the corpora (file order): nothing they sent hurt the capability, and every
    job route still serves."""
    for bad in CORPUS[:5] + AI_RUNNER_CORPUS[:5]:
        send(hybrid, bad)  # and once more, back to back
    wait_health(hybrid, 10)
    reply = httpx.post(hybrid + ROUTE, json=good_body(), timeout=60)
    assert reply.status_code == 200, reply.text
    byoc = httpx.post(hybrid + BYOC_ROUTE, json=good_body(), timeout=60)
    assert byoc.status_code == 200 and byoc.json()["outputs"]["image"].startswith("data:image/png;base64,"), byoc.text[
        :300
    ]
    ai = send(hybrid, ai_runner(name="good", status=200, field="", says="", fields={"seed": "7"}))
    assert ai.status_code == 200 and ai.json()["images"][0]["seed"] == 7, ai.text[:300]
    text = png_b64(frame())
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # base64's default output: accepted
    again = httpx.post(
        hybrid + ROUTE, json={"inputs": {"image": wrapped, "prompt": "a castle"}, "params": FAST}, timeout=60
    )
    assert again.status_code == 200 and again.json()["outputs"] == reply.json()["outputs"]
    print(f"\nbad-request corpus: {len(CORPUS)} requests, {len(FORBIDDEN)} forbidden params, all 4xx naming the field")


def test_graph_files_load_with_safe_yaml_and_an_alias_bound():
    """What reaches the builder as a file: a billion-laughs file and a Python tag are refused
    in well under a second, with the reason, before Ray is asked for anything."""
    from capgraph.engine.errors import GraphInvalid
    from capgraph.serve.app import CapabilityArgs, plan_app

    for name, says in (("bad_billion_laughs.yaml", "billion laughs"), ("bad_python_tag.yaml", "python")):
        start = time.monotonic()
        with pytest.raises(GraphInvalid) as err:
            plan_app(CapabilityArgs(graph=str(BAD_GRAPHS / name)))
        assert time.monotonic() - start < 2 and says in err.value.render().lower(), err.value.render()


def test_the_corpus_is_what_the_issue_lists():
    names = " ".join(b.name for b in CORPUS)
    for wanted in (
        "over max_body_bytes",
        "60000x60000",
        "truncated PNG",
        "data: URL of text/plain",
        "no filename",
        "as a string",
        "NaN",
        "Infinity",
        "negative steps",
        "zero steps",
        "huge steps",
        "huge strength",
        "100 kB prompt",
        "deeply nested",
        "unknown param",
        "text/plain body",
        "GET on the run route",
    ):
        assert wanted in names, wanted
    assert len(CORPUS) + len(FORBIDDEN) >= 80
    assert len(BYOC_CORPUS) >= len(CORPUS) - 10 and len(AI_RUNNER_CORPUS) >= 15
