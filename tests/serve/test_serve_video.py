"""graphs/image-to-video.yaml served on a real Ray Serve instance with tiny models (one app for
every test here): /v1 answers an MP4 of the asked frames and rate, the per-frame upscale runs
over the clip in batches on its own deployment (its timings say the batch), the livepeer-ai
SDK's image_to_video gets the clip, and bad params are 4xx naming the field."""

import base64
import json

import httpx
import pytest

from capgraph.engine.video import decode_video
from tests.conftest import GRAPHS
from tests.serve.support import calls, frame, png_b64, served

pytestmark = pytest.mark.slow

SMALL = {"fit.width": 64, "fit.height": 64, "video.frames": 6, "video.fps": 8, "video.steps": 1}


@pytest.fixture(scope="module")
def clip_app(serve_url: str):
    with served(serve_url, str(GRAPHS / "image-to-video.yaml"), "i2v") as url:
        yield url


def test_v1_answers_an_mp4_and_the_upscale_runs_over_the_clip_in_batches(clip_app):
    before = calls("i2v", "upscale")
    body = {"inputs": {"image": png_b64(frame(96, 64))}, "params": SMALL}
    answer = httpx.post(f"{clip_app}/v1/image-to-video", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    outputs, timings = answer.json()["outputs"], answer.json()["timings_ms"]
    clip = decode_video(base64.b64decode(outputs["video"]))
    assert clip.frames.shape == (6, 256, 256, 3) and clip.fps == 8.0 and outputs["nsfw"] is False
    assert timings["upscale.batch"] == 6 and timings["upscale"] > 0  # 6 frames in one call (batch.max_size 8)
    assert calls("i2v", "upscale") == before + 1  # one hop for the clip, not one per frame


def test_the_sdk_gets_the_asked_frames(clip_app):
    from livepeer_ai import Livepeer

    from tests.livepeer.lp_support import close_sdk, png

    sdk = Livepeer(http_bearer="any", server_url=clip_app, timeout_ms=300_000)
    try:
        request = {
            "image": {"file_name": "in.png", "content": png(frame(96, 64)), "content_type": "image/png"},
            "width": 64,
            "height": 64,
            "fps": 12,
            "num_inference_steps": 1,
            "seed": 9,
        }
        answer = sdk.generate.image_to_video(request=request)
    finally:
        close_sdk(sdk)
    (video,) = answer.video_response.images
    clip = decode_video(base64.b64decode(video.url.split(",", 1)[1]))
    assert clip.frames.shape[0] == 25 and clip.fps == 12.0 and video.seed == 9  # the graph's 25 frames
    assert len(json.loads(answer.http_meta.response.text)["frames"][0]) == 25


def test_bad_params_are_4xx_naming_the_field(clip_app):
    body = {"inputs": {"image": png_b64(frame())}, "params": SMALL | {"video.frames": 0}}
    answer = httpx.post(f"{clip_app}/v1/image-to-video", json=body, timeout=60)
    assert answer.status_code in (400, 422) and "video.frames" in answer.text


def test_the_console_says_what_runs_and_the_timeout_fits_a_clip(clip_app):
    live = httpx.get(f"{clip_app}/console/api/live", timeout=30).json()
    assert live["nodes"]["video"]["running"] is None  # idle: nothing runs
    graph = httpx.get(f"{clip_app}/console/api/graph", timeout=30).json()
    assert graph["limits"]["request_timeout_s"] == 900  # svd asks for 900 s (Node.request_timeout_s)


def test_a_clip_family_raises_the_default_request_timeout():
    from capgraph.engine.validate import load_plan
    from capgraph.serve.app import CapabilityArgs, request_timeout

    path = str(GRAPHS / "image-to-video.yaml")
    assert request_timeout(CapabilityArgs(graph=path), load_plan(path)) == 900
    assert request_timeout(CapabilityArgs(graph=path, request_timeout_s=30), load_plan(path)) == 30
    edges = str(GRAPHS / "edges.yaml")
    assert request_timeout(CapabilityArgs(graph=edges), load_plan(edges)) == 60


def test_while_a_clip_runs_health_answers_and_the_console_shows_its_steps(clip_app):
    import concurrent.futures
    import time

    body = {"inputs": {"image": png_b64(frame())}, "params": SMALL | {"video.frames": 12, "video.steps": 12}}
    seen: list[dict] = []
    health: set[int] = set()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(httpx.post, f"{clip_app}/v1/image-to-video", json=body, timeout=300)
        while not job.done():
            health.add(httpx.get(f"{clip_app}/health", timeout=10).status_code)
            running = httpx.get(f"{clip_app}/console/api/live", timeout=10).json()["nodes"]["video"]["running"]
            if running and running["progress"]:
                seen.append(running)
            time.sleep(0.1)
        assert job.result().status_code == 200, job.result().text
    assert health == {200}
    assert seen and all(r["node"] == "video" and r["progress"][1] == 12 for r in seen)
    assert seen[-1]["progress"][0] >= seen[0]["progress"][0] and seen[-1]["running_s"] >= 0


def test_a_model_over_a_clip_is_shared_only_with_nodes_over_clips():
    from capgraph.engine.validate import plan_from_data
    from capgraph.serve.compile.sharing import share_key

    def graph(name: str, kind: str) -> dict:
        up = {"type": "upscale", "inputs": {"image": "x"}}
        return {"capability": name, "inputs": {"x": kind}, "nodes": {"up": up}, "outputs": {"y": "up.image"}}

    clips, clips_too, frames = (plan_from_data(graph(*g)) for g in (("a", "video"), ("b", "video"), ("c", "image")))
    assert share_key(clips.nodes["up"]) == share_key(clips_too.nodes["up"]) != share_key(frames.nodes["up"])
