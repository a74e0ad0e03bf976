"""The request rules on their own, without Ray: JSON that json.loads lets through, params
typed as the family declares them, sizes under the pixel limit, base64 and data: URLs, the
OpenAPI request schema, and the bearer-token middleware on a bare ASGI app."""

import base64

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from capgraph.engine.errors import InputError
from capgraph.engine.validate import load_plan
from capgraph.livepeer.guard import BearerAuth, bearer_ok
from capgraph.serve.capability import http
from tests.reliability.support import HYBRID, MAX_PIXELS, TOKEN, frame, png_b64


@pytest.fixture(scope="module")
def plan():
    return load_plan(HYBRID)


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        (b'{"params": {"generate.guidance": NaN}}', "params.generate.guidance", "NaN is not a number JSON allows"),
        (b'{"params": {"generate.guidance": Infinity}}', "params.generate.guidance", "Infinity"),
        (b'{"inputs": {"points": [[1, -Infinity, 1]]}}', "inputs.points[0][1]", "-Infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "body", "nested too deeply"),
        (b'{"a": ' * 40 + b"1" + b"}" * 40, "a." * 32 + "a", "deeper than 32 levels"),
        (b'{"a": "\xc3\x28"}', "body", "not UTF-8"),
        (b"{nope", "body", "not valid JSON"),
    ],
    ids=["nan", "infinity", "nested-infinity", "deep-array", "deep-object", "not-utf8", "malformed"],
)
def test_json_the_stdlib_would_accept_is_refused_naming_where(raw, field, fragment):
    with pytest.raises(InputError) as err:
        http.loads(raw)
    assert (err.value.field, err.value.status) == (field, 400) and fragment in err.value.message


@pytest.mark.parametrize(
    ("params", "field", "status", "fragment"),
    [
        ({"generate.steps": "20"}, "params.generate.steps", 422, 'send 20, not "20"'),
        ({"generate.seed": True}, "params.generate.seed", 422, "expected integer, got boolean"),
        ({"generate.guidance": "5"}, "params.generate.guidance", 422, "expected number, got string"),
        ({"generate.steps": 2.5}, "params.generate.steps", 422, "expected a whole number, got 2.5"),
        ({"generate.steps": 0}, "params.generate.steps", 422, "greater than or equal to 1"),
        ({"generate.steps": 10**9}, "params.generate.steps", 422, "less than or equal to 100"),
        ({"generate.strength": -0.5}, "params.generate.strength", 422, "greater than or equal to 0"),
        (
            {"generate.width": 2048, "generate.height": 2048},
            "params.generate.width",
            413,
            "over this capability's limit",
        ),
        ({"fit.width": 8192}, "params.fit.width", 413, "counts as a square"),
        ({"generate.model": "/etc/passwd"}, "params.generate.model", 422, "fixed by the graph"),
        ({"depth.device": "cuda:1"}, "params.depth.device", 422, "unknown param"),
        ({"generate.trust_remote_code": True}, "params.generate.trust_remote_code", 422, "unknown param"),
        ({"fit.max_side": 8192}, "params.fit.max_side", 422, "fixed by the graph"),
    ],
    ids=[
        "number-as-string",
        "bool-for-int",
        "float-as-string",
        "fraction-for-int",
        "zero-steps",
        "huge-steps",
        "negative-strength",
        "size-over-limit",
        "one-side-over-limit",
        "model-path",
        "device",
        "trust-remote-code",
        "fixed",
    ],
)
def test_params_are_checked_before_any_image_is_decoded(plan, params, field, status, fragment):
    with pytest.raises(InputError) as err:
        http.parse_json(plan, {"inputs": {"image": "not even base64"}, "params": params}, MAX_PIXELS)
    assert (err.value.field, err.value.status) == (field, status)
    assert fragment.lower() in err.value.message.lower(), err.value.message


def test_whole_numbers_and_in_bound_sizes_pass(plan):
    http.check_params(
        plan, {"generate.steps": 20.0, "generate.guidance": 5, "fit.width": 64, "fit.height": 256}, MAX_PIXELS
    )


def test_base64_wrapped_in_lines_is_accepted_and_data_urls_must_say_an_image(plan):
    text = png_b64(frame(16, 16))
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # what `base64` prints by default
    inputs, _ = http.parse_json(plan, {"inputs": {"image": wrapped}}, MAX_PIXELS)
    assert inputs["image"].shape == (16, 16, 3)
    with pytest.raises(InputError) as err:
        http.parse_json(plan, {"inputs": {"image": "data:text/plain;base64," + text}}, MAX_PIXELS)
    assert (err.value.field, err.value.status) == ("inputs.image", 415) and "text/plain" in err.value.message


def test_text_inputs_are_bounded(plan):
    with pytest.raises(InputError) as err:
        http.parse_json(plan, {"inputs": {"image": png_b64(frame(8, 8)), "prompt": "x" * 100_000}}, MAX_PIXELS)
    assert (err.value.field, err.value.status) == ("inputs.prompt", 422) and "100,000 characters" in err.value.message


def test_a_multipart_image_part_without_a_filename_says_how_to_send_it(plan):
    raw_png = base64.b64decode(png_b64(frame(8, 8))).decode("latin-1")  # what a part with no filename arrives as
    with pytest.raises(InputError) as err:
        http.parse_form(plan, {"image": raw_png}, MAX_PIXELS)
    assert err.value.field == "inputs.image" and "file part (with a filename)" in err.value.message
    with pytest.raises(InputError) as err:
        http.parse_form(plan, {"image": png_b64(frame(8, 8)), "params": '{"generate.steps": NaN}'}, MAX_PIXELS)
    assert err.value.field == "params.generate.steps"


def test_the_openapi_request_schema_accepts_good_bodies_and_refuses_bad_ones(plan):
    schema = http.request_schema(plan)["application/json"]["schema"]
    jsonschema.validate(
        {"inputs": {"image": png_b64(frame(8, 8)), "prompt": "a"}, "params": {"generate.steps": 2}}, schema
    )
    for bad in (
        {"inputs": {}},
        {"inputs": {"image": "x"}, "params": {"generate.model": "x"}},
        {"inputs": {"image": "x"}, "params": {"generate.steps": 0}},
        {"inputs": {"image": "x"}, "extra": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert "generate.model" not in schema["properties"]["params"]["properties"]
    assert "$ref" not in str(schema)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer {TOKEN}x", False),
        (TOKEN, False),
        ("", False),
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN[:-1]}", False),
    ],
)
def test_bearer_header_parsing(header, ok):
    assert bearer_ok(header, TOKEN) is ok


def test_bearer_middleware_guards_every_route_but_health_and_ready():
    app = FastAPI()
    for path in ("/health", "/ready", "/v1/x", "/docs-like", "/x"):
        app.add_api_route(path, lambda: {"ok": True}, methods=["GET"])
    app.add_middleware(BearerAuth, token=TOKEN)
    with TestClient(app) as client:
        for path in ("/health", "/ready", "/health/"):
            assert client.get(path).status_code == 200
        for path in ("/v1/x", "/docs-like", "/x", "/openapi.json", "/nowhere"):
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
                reply = client.get(path, headers=headers)
                assert reply.status_code == 401 and reply.json() == {"detail": {"msg": "Invalid bearer token."}}
                assert reply.headers["www-authenticate"] == "Bearer" and TOKEN not in reply.text
        assert client.get("/v1/x", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
