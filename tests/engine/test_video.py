"""The Video port: its MP4 codec and bounds, and nodes that take an Image run over a clip's frames."""

import base64
import io

import numpy as np
import pytest

from capgraph.engine import codecs, video
from capgraph.engine.errors import GraphInvalid, InputError
from capgraph.engine.executor import Executor
from capgraph.engine.types import PortType
from capgraph.engine.validate import plan_from_data
from capgraph.engine.video import Video, decode_video, encode_video
from capgraph.serve.capability import http


def clip(frames: int = 5, height: int = 24, width: int = 32, fps: float = 8.0) -> Video:
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    return Video(np.stack([np.roll(ramp, 3 * t, axis=1) for t in range(frames)]).astype(np.uint8), fps)


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return encode_video(clip())


@pytest.fixture(scope="module")
def fit():
    return plan_from_data(
        {
            "capability": "fit-clip",
            "inputs": {"clip": "video"},
            "nodes": {
                "fit": {
                    "type": "resize",
                    "params": {"width": 16, "height": 16},
                    "inputs": {"image": "clip"},
                    "batch": {"max_size": 2},
                },
                "edges": {"type": "canny", "inputs": {"image": "fit.image"}},
            },
            "outputs": {"small": "fit.image", "grey": "edges.edges"},
        }
    )


def test_an_mp4_comes_back_with_its_frames_and_rate(mp4):
    import av

    assert mp4[4:8] == b"ftyp"
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == 8.0
        assert len(list(container.decode(stream))) == 5
    back = decode_video(mp4, "clip")
    assert back.frames.shape == (5, 24, 32, 3) and back.fps == 8.0
    assert np.abs(back.frames.astype(int) - clip().frames.astype(int)).mean() < 8  # lossy, but the same picture


def test_base64_and_data_urls_decode_alike_and_answers_are_data_urls(mp4):
    c = codecs.codec(PortType.VIDEO)
    text = base64.b64encode(mp4).decode()
    from_url = c.from_json(f"data:video/mp4;base64,{text}", "inputs.clip")
    assert c.from_json(text, "inputs.clip").frames.shape == from_url.frames.shape == (5, 24, 32, 3)
    assert codecs.encode_value(PortType.VIDEO, clip(), data_url=True).startswith("data:video/mp4;base64,AAAA")


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"not a video at all" * 20, 400, "not a video"),
        ("no decoder", 400, "codec cannot be decoded"),  # a track whose codec FFmpeg does not know
        (b"", 422, "empty"),  # as an empty image is
        ("half", 400, "video"),
    ],
)
def test_bad_videos_are_4xx_naming_the_field(mp4, data, status, words):
    data = {"half": mp4[: len(mp4) // 2], "no decoder": mp4.replace(b"avc1", b"zzzz")}.get(data, data)
    with pytest.raises(InputError) as caught:
        codecs.codec(PortType.VIDEO).from_bytes(data, "inputs.clip")
    assert caught.value.field == "inputs.clip" and caught.value.status == status and words in caught.value.message


def test_a_video_too_long_or_too_large_is_a_413_before_it_is_all_decoded(mp4, monkeypatch):
    with pytest.raises(InputError, match="24 pixels, over the limit") as large:
        decode_video(mp4, "inputs.clip", max_pixels=100)
    monkeypatch.setattr(video, "MAX_FRAMES", 3)
    with pytest.raises(InputError, match="5 frames is over the limit of 3") as long:
        decode_video(mp4, "inputs.clip")
    monkeypatch.setattr(video, "MAX_FRAMES", 600)
    monkeypatch.setattr(video, "MAX_VIDEO_PIXELS", 32 * 24 * 4)
    with pytest.raises(InputError, match="frames x pixels") as pixels:
        decode_video(mp4, "inputs.clip")
    assert {large.value.status, long.value.status, pixels.value.status} == {413}


def test_a_data_url_of_another_media_type_is_a_415(mp4):
    with pytest.raises(InputError) as caught:
        codecs.codec(PortType.VIDEO).from_json("data:image/png;base64," + base64.b64encode(mp4).decode(), "inputs.clip")
    assert caught.value.status == 415 and caught.value.field == "inputs.clip"


def test_odd_sides_are_padded_to_even_for_h264():
    assert decode_video(encode_video(clip(2, 23, 31))).frames.shape == (2, 24, 32, 3)


def test_a_node_that_takes_an_image_runs_over_a_clip_in_batches_and_gives_videos(fit):
    assert fit.nodes["fit"].clip == {"image"} and fit.nodes["edges"].clip == {"image"}
    assert fit.output_type("small") is PortType.VIDEO and fit.output_type("grey") is PortType.VIDEO
    result = Executor(fit).run([{"clip": clip(5)}])
    small, grey = result.outputs[0]["small"], result.outputs[0]["grey"]
    assert small.frames.shape == (5, 16, 16, 3) and small.fps == 8.0 and grey.frames.shape == (5, 16, 16, 3)
    assert result.timings_ms["fit.batch"] == 2  # batch.max_size frames per call
    assert result.timings_ms["edges.batch"] == 5  # the family's default batch holds the whole clip


def test_v1_json_and_multipart_take_an_mp4(fit, mp4):
    inputs, _ = http.parse_json(fit, {"inputs": {"clip": base64.b64encode(mp4).decode()}}, codecs.MAX_PIXELS)
    assert len(inputs["clip"]) == 5
    inputs, _ = http.parse_form(fit, {"clip": mp4}, codecs.MAX_PIXELS)
    assert inputs["clip"].fps == 8.0
    with pytest.raises(InputError) as caught:
        http.parse_form(fit, {"clip": mp4[:300]}, codecs.MAX_PIXELS)
    assert caught.value.field == "inputs.clip" and caught.value.status == 400


def test_a_per_frame_output_with_no_clip_form_is_refused_naming_it():
    with pytest.raises(GraphInvalid) as caught:
        plan_from_data(
            {
                "capability": "bad",
                "inputs": {"clip": "video"},
                "nodes": {"seg": {"type": "sam2", "inputs": {"image": "clip"}}},
                "outputs": {"masks": "seg.masks"},
            }
        )
    assert "'seg.masks' (Masks) has no clip form" in str(caught.value)


def test_clips_of_different_lengths_into_one_node_are_an_input_error():
    plan = plan_from_data(
        {
            "capability": "two",
            "inputs": {"a": "video", "b": "video", "mask": "mask"},
            "nodes": {"mix": {"type": "composite", "inputs": {"foreground": "a", "background": "b", "mask": "mask"}}},
            "outputs": {"out": "mix.image"},
        }
    )
    with pytest.raises(InputError, match="clips of different lengths"):
        Executor(plan).run([{"a": clip(3), "b": clip(2), "mask": np.ones((24, 32), np.float32)}])


def test_a_video_payload_over_the_byte_limit_is_a_413_before_decoding(monkeypatch):
    monkeypatch.setattr(codecs, "MAX_VIDEO_BYTES", 1000)
    with pytest.raises(InputError, match="larger than any video allowed") as caught:
        codecs.codec(PortType.VIDEO).from_json("A" * 4000, "inputs.clip")
    assert caught.value.status == 413 and caught.value.field == "inputs.clip"


def test_a_model_node_runs_over_a_clip_and_its_maps_come_back_as_grey_frames(tiny_models):
    plan = plan_from_data(
        {
            "capability": "clip-depth",
            "inputs": {"clip": "video"},
            "nodes": {"depth": {"type": "depth", "inputs": {"image": "clip"}, "batch": {"max_size": 3}}},
            "outputs": {"depth": "depth.depth_map", "preview": "depth.preview"},
        }
    )
    result = Executor(plan).run([{"clip": clip(4)}])
    depth, preview = result.outputs[0]["depth"], result.outputs[0]["preview"]
    assert depth.frames.shape == preview.frames.shape == (4, 24, 32, 3) and depth.fps == 8.0
    assert (depth.frames[..., 0] == depth.frames[..., 1]).all()  # a map as grey RGB frames
    assert result.timings_ms["depth.batch"] == 3
