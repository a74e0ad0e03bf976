"""The wire format: requests decoded, faults named, outputs encoded. No Ray, no server."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from capgraph.engine.errors import InputError
from capgraph.engine.types import PortType
from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.serve.capability import http
from tests.conftest import GRAPHS
from tests.serve.support import decode_b64_png, frame, png_b64

MAX = 128 * 128


@pytest.fixture(scope="module")
def hybrid():
    return load_plan(GRAPHS / "hybrid.yaml")


@pytest.fixture(scope="module")
def composite():
    return plan_from_data(
        {
            "capability": "blend",
            "inputs": {"fg": "image", "bg": "image", "mask": "mask", "amount": {"type": "number", "default": 1.0}},
            "nodes": {"mix": {"type": "composite", "inputs": {"foreground": "fg", "background": "bg", "mask": "mask"}}},
            "outputs": {"image": "mix.image", "mask": "mix.mask"},
        }
    )


def test_json_images_as_base64_or_data_urls(hybrid):
    image = frame(32, 16)
    inputs, params = http.parse_json(
        hybrid, {"inputs": {"image": png_b64(image), "prompt": "p"}, "params": {"generate.steps": 2}}, MAX
    )
    assert np.array_equal(inputs["image"], image) and inputs["prompt"] == "p" and params["generate"].steps == 2
    # resolved once, here, for every node (a node the request leaves alone keeps the graph's own params),
    # and passed on as is
    assert all(params[n] is hybrid.nodes[n].params for n in hybrid.nodes if n != "generate")
    url = "data:image/png;base64," + png_b64(image)
    assert np.array_equal(http.parse_json(hybrid, {"inputs": {"image": url}}, MAX)[0]["image"], image)


def test_masks_are_greyscale_images(composite):
    white = np.full((8, 8, 3), 255, np.uint8)
    inputs, _ = http.parse_json(
        composite, {"inputs": {"fg": png_b64(white), "bg": png_b64(white), "mask": png_b64(white)}}, MAX
    )
    assert inputs["mask"].dtype == np.float32 and inputs["mask"].shape == (8, 8) and inputs["mask"].min() == 1.0


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ([1, 2], "body", 400),
        ({"inputs": [], "params": {}}, "inputs", 400),
        ({"inputs": {}, "params": [1]}, "params", 400),
        ({"inputs": {}, "oops": 1}, "oops", 400),
        ({"inputs": {"image": 12}}, "inputs.image", 422),
        ({"inputs": {"image": "@@@"}}, "inputs.image", 400),
        ({"inputs": {"image": "data:image/png,raw"}}, "inputs.image", 400),
        ({"inputs": {"image": base64.b64encode(b"\x89PNG\r\n\x1a\n broken").decode()}}, "inputs.image", 400),
        ({"inputs": {"image": png_b64(frame(200, 100))}}, "inputs.image", 413),
        ({"inputs": {"image": "A" * 2_000_000}}, "inputs.image", 413),  # over 4 bytes a pixel + 1 MiB
    ],
    ids=[
        "not-object",
        "inputs-list",
        "params-list",
        "unknown-field",
        "image-not-string",
        "bad-base64",
        "data-url-not-base64",
        "truncated-png",
        "too-many-pixels",
        "payload-too-large",
    ],
)
def test_faults_name_the_field(hybrid, body, field, status):
    with pytest.raises(InputError) as err:
        http.parse_json(hybrid, body, MAX)
    assert (err.value.field, err.value.status) == (field, status)


def test_multipart_fields(hybrid, composite):
    buf = io.BytesIO()
    Image.fromarray(frame(16, 16)).save(buf, format="JPEG")
    inputs, params = http.parse_form(
        hybrid, {"image": buf.getvalue(), "prompt": "a castle", "params": '{"generate.seed": 3}'}, MAX
    )
    assert inputs["image"].shape == (16, 16, 3) and inputs["prompt"] == "a castle" and params["generate"].seed == 3
    assert http.parse_form(composite, {"amount": "0.5"}, MAX)[0] == {"amount": 0.5}
    with pytest.raises(InputError) as err:
        http.parse_form(composite, {"amount": "half"}, MAX)
    assert err.value.field == "inputs.amount"
    with pytest.raises(InputError) as err:
        http.parse_form(hybrid, {"params": "{not json"}, MAX)
    assert err.value.field == "params"
    with pytest.raises(InputError) as err:
        http.parse_form(hybrid, {"prompt": b"a file for a text input"}, MAX)
    assert err.value.field == "inputs.prompt"


def test_outputs_encode_as_png():
    image = frame(24, 16)
    assert np.array_equal(decode_b64_png(http.encode_value(PortType.IMAGE, image)), image)
    depth = np.linspace(0, 1, 32, dtype=np.float32).reshape(4, 8)
    grey = decode_b64_png(http.encode_value(PortType.DEPTH_MAP, depth))
    assert grey.shape == (4, 8) and grey[0, 0] == 0 and grey[-1, -1] == 255
    labels = np.array([[0, 1], [300, 2]], np.int32)
    assert np.array_equal(decode_b64_png(http.encode_value(PortType.SEGMENTATION_MAP, labels)), labels)  # 16-bit
    masks = {
        "masks": np.ones((2, 4, 4), np.float32),
        "scores": np.array([0.9, 0.1], np.float32),
        "logits": np.zeros((2, 2, 2)),
    }
    encoded = http.encode_value(PortType.MASKS, masks)
    assert len(encoded["masks"]) == 2 and encoded["scores"] == pytest.approx([0.9, 0.1])
    assert http.encode_value(PortType.BOXES, [np.array([1, 2, 3, 4])]) == [[1, 2, 3, 4]]
    assert http.encode_value(PortType.NUMBER, np.float32(0.5)) == 0.5


def test_schema(hybrid):
    schema = http.schema(hybrid)
    assert schema["capability"] == "hybrid-depth-sdxl"
    assert schema["inputs"]["image"] == {
        "type": "image",
        "required": True,
        "description": "the frame whose layout (depth) the new image keeps",
        "encoding": http.ENCODINGS[PortType.IMAGE],
    }
    assert schema["inputs"]["prompt"]["default"].startswith("a cinematic photo")
    assert schema["params"]["generate.steps"]["default"] == 30 and "maximum" in schema["params"]["generate.steps"]
    assert "generate.model" not in schema["params"] and schema["outputs"]["image"]["type"] == "image"


@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        ("", None),
        ("application/json", None),
        ("*/*", None),
        ("text/html,application/xhtml+xml,*/*;q=0.8", None),  # a browser: JSON
        ("image/webp", ("image", "webp")),
        ("image/jpeg;q=0.9, application/json;q=0.5", ("image", "jpeg")),
        ("application/json;q=0.5, image/png", ("image", "png")),
        ("image/*", ("image", "png")),
    ],
)
def test_accept_may_ask_for_the_image_itself(hybrid, accept, answer):
    assert http.answer_type(hybrid, accept) == answer


def test_an_image_answer_needs_one_image_output(composite):
    with pytest.raises(InputError) as err:
        http.answer_type(composite, "image/png")
    assert err.value.status == 406 and err.value.field == "headers.accept" and "image, mask" in err.value.message
    with pytest.raises(InputError) as err:
        http.answer_type(composite, "image/png;q=x")
    assert err.value.status == 400


def test_image_answers_encode_as_asked(hybrid):
    image = frame(32, 16)
    for fmt, magic in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")):
        data = http.render_image(hybrid, {"image": image}, "image", fmt)
        assert data.startswith(magic)
        assert Image.open(io.BytesIO(data)).size == (32, 16)
