"""ai-runner's /image-to-video on graphs/image-to-video.yaml, served in process on tiny models
and called by the real livepeer-ai SDK: the clip's frames as PNG data URLs with the seed and
the checker's verdict (ai-runner's `frames`), the clip as one MP4 (`images`, what the SDK
reads); bad params are 4xx naming the request's field."""

import base64
import json

import httpx
import pytest

pytest.importorskip("livepeer_ai", reason="the ai-runner tests call the livepeer-ai SDK (a test dependency)")

from livepeer_ai import Livepeer  # noqa: E402
from livepeer_ai.models import errors  # noqa: E402

from capgraph.engine.validate import load_plan, plan_from_data  # noqa: E402
from capgraph.engine.video import decode_video  # noqa: E402
from capgraph.engine.yamlload import load_yaml  # noqa: E402
from capgraph.livepeer.local import local_app  # noqa: E402
from capgraph.livepeer.settings import load_settings, read_section  # noqa: E402
from tests.conftest import GRAPHS  # noqa: E402
from tests.livepeer.lp_support import (  # noqa: E402
    TOKEN,
    GatedBackend,
    ServerThread,
    close_sdk,
    decode_data_url,
    free_port,
    photo,
    png,
    wait_for,
)

SMALL = {"width": 64, "height": 64, "num_inference_steps": 1, "fps": 8, "seed": 3}
FRAMES = 5


@pytest.fixture(scope="module")
def service():
    """The shipped graph, its clips cut to FRAMES frames (a graph param: ai-runner's request has no frame count)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        env.setenv("CAPGRAPH_AUTH_TOKEN", TOKEN)
        port = free_port()
        env.setenv("CAPGRAPH_LIVEPEER__URL", f"http://127.0.0.1:{port}")
        tree = load_yaml((GRAPHS / "image-to-video.yaml").read_text())
        tree["nodes"]["video"]["params"]["frames"] = FRAMES
        plan = plan_from_data({k: v for k, v in tree.items() if k not in ("livepeer", "applications")})
        assert load_plan(GRAPHS / "image-to-video.yaml").nodes.keys() == plan.nodes.keys()
        settings = load_settings(plan, read_section(GRAPHS / "image-to-video.yaml"))
        server = ServerThread(local_app(plan, settings, GatedBackend(plan)), port).start()
        try:
            wait_for(lambda: httpx.get(f"{server.url}/ready").status_code == 200, 120)
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def sdk(service):
    client = Livepeer(http_bearer=TOKEN, server_url=service, timeout_ms=120_000)
    yield client
    close_sdk(client)


def image_part() -> dict:
    return {"file_name": "in.png", "content": png(photo(96, 64)), "content_type": "image/png"}


def test_the_sdk_gets_the_clip_and_its_frames(service, sdk):
    answer = sdk.generate.image_to_video(request={"image": image_part()} | SMALL)
    (video,) = answer.video_response.images
    assert video.url.startswith("data:video/mp4;base64,") and video.seed == 3 and video.nsfw is False
    clip = decode_video(base64.b64decode(video.url.split(",", 1)[1]))
    assert clip.frames.shape == (FRAMES, 256, 256, 3) and clip.fps == 8.0  # 64 px, ESRGAN x4
    (frames,) = json.loads(answer.http_meta.response.text)["frames"]  # ai-runner's own answer
    assert len(frames) == FRAMES and all(f["seed"] == 3 and f["nsfw"] is False for f in frames)
    assert decode_data_url(frames[0]["url"]).shape == (256, 256, 3)
    assert answer.http_meta.response.headers["X-Capgraph-Safety"] == "checked"


def test_bad_params_are_400s_naming_the_field(service, sdk):
    with pytest.raises(errors.HTTPError) as caught:
        sdk.generate.image_to_video(request={"image": image_part()} | SMALL | {"motion_bucket_id": 5000})
    assert "motion_bucket_id" in caught.value.data.detail.msg
    wrong = httpx.post(
        f"{service}/image-to-video",
        files={"image": ("in.png", png(photo(96, 64)), "image/png")},
        data={"fps": "0"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert wrong.status_code == 400 and "fps" in wrong.json()["detail"]["msg"]
    odd = httpx.post(
        f"{service}/image-to-video",
        files={"image": ("in.png", png(photo(96, 64)), "image/png")},
        data={"width": "100"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert odd.status_code == 400 and "divisible by 8" in odd.json()["detail"]["msg"]
    no_image = httpx.post(f"{service}/image-to-video", data={"fps": "6"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert no_image.status_code == 422 and no_image.json()["detail"][0]["loc"] == ["body", "image"]
