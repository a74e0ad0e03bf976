"""The port codecs: one rule per type, the same from the CLI, multipart, JSON and Livepeer."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from capgraph.engine import codecs
from capgraph.engine.errors import InputError
from capgraph.engine.types import PortType
from capgraph.engine.validate import plan_from_data
from capgraph.serve.capability import http


@pytest.fixture(scope="module")
def echo():
    return plan_from_data(
        {
            "capability": "echo",
            "inputs": {"flag": "bool", "labels": "segmentation_map", "depth": "depth_map", "image": "image"},
            "nodes": {"fit": {"type": "resize", "inputs": {"image": "image"}}},
            "outputs": {"flag": "flag", "labels": "labels", "depth": "depth", "image": "fit.image"},
        }
    )


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("YES", True), ("1", True), ("False", False), ("no", False), ("0", False)]
)
def test_booleans_as_text_follow_one_rule_on_the_cli_and_in_multipart(echo, tmp_path, text, value):
    assert codecs.from_arg(PortType.BOOL, text, "--input flag") is value
    assert http.parse_form(echo, {"flag": text}, codecs.MAX_PIXELS)[0]["flag"] is value


def test_a_bad_boolean_is_refused_alike(echo):
    with pytest.raises(InputError) as cli:
        codecs.from_arg(PortType.BOOL, "maybe", "--input flag")
    with pytest.raises(InputError) as form:
        http.parse_form(echo, {"flag": "maybe"}, codecs.MAX_PIXELS)
    assert cli.value.message == form.value.message == "'maybe' is not a valid Bool" and form.value.status == 422


def test_maps_from_files_on_the_cli_and_in_multipart(echo, tmp_path):
    grey = np.full((4, 6, 3), 255, np.uint8)
    (tmp_path / "depth.png").write_bytes(png(grey))
    from_cli = codecs.from_arg(PortType.DEPTH_MAP, str(tmp_path / "depth.png"), "--input depth")
    from_form = http.parse_form(echo, {"depth": png(grey)}, codecs.MAX_PIXELS)[0]["depth"]
    assert from_cli.dtype == np.float32 and from_cli.shape == (4, 6) and np.array_equal(from_cli, from_form)


def test_segmentation_maps_round_trip_through_16_bit_png(echo):
    labels = np.array([[0, 1], [300, 2]], np.int32)
    encoded = http.encode_value(PortType.SEGMENTATION_MAP, labels)
    decoded = http.parse_json(echo, {"inputs": {"labels": encoded}}, codecs.MAX_PIXELS)[0]["labels"]
    assert decoded.dtype == np.int32 and np.array_equal(decoded, labels)


def test_livepeer_answers_are_the_same_pngs_as_data_urls(echo):
    outputs = {
        "flag": np.bool_(True),
        "labels": np.array([[0, 7]], np.int32),
        "depth": np.ones((2, 2), np.float32),
        "image": np.zeros((2, 2, 3), np.uint8),
    }
    bare, urls = http.encode_outputs(echo, outputs), codecs.encode_outputs(echo, outputs, data_url=True)
    assert bare["flag"] is urls["flag"] is True
    for name in ("labels", "depth", "image"):
        assert urls[name] == "data:image/png;base64," + bare[name]
    assert codecs.image_url(PortType.DEPTH_MAP, np.ones((2, 2), np.float32)).startswith("data:image/png;base64,")
    assert (
        codecs.encode_value(PortType.BYTES, b"GIF89a", data_url=True)
        == "data:image/gif;base64," + base64.b64encode(b"GIF89a").decode()
    )


def test_every_type_has_a_schema_and_files_are_binary_parts():
    for kind, port in codecs.CODECS.items():
        assert port.kind is kind and "type" in port.json_schema()
        assert port.form_schema() == ({"type": "string", "format": "binary"} if port.file else {"type": "string"})
    assert codecs.ENCODINGS[PortType.BYTES] == "base64" and PortType.TEXT not in codecs.ENCODINGS


def test_a_decompression_bomb_is_refused_from_its_header_everywhere(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(InputError) as cli:
        codecs.from_arg(PortType.IMAGE, str(tmp_path / "bomb.png"), "--input image")
    with pytest.raises(InputError) as form:
        codecs.codec(PortType.MASK).from_bytes(bomb, "inputs.mask")
    assert cli.value.status == form.value.status == 413 and "decompression bomb" in cli.value.message
