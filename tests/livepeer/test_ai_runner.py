"""The ai-runner routes, called by the real livepeer-ai SDK (server_url = the local service)
and by hand the way go-livepeer's `ai/worker/multipart.go` writes a request."""

import concurrent.futures
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("livepeer_ai", reason="the ai-runner tests call the livepeer-ai SDK (a test dependency)")

from livepeer_ai import Livepeer  # noqa: E402
from livepeer_ai.models import errors  # noqa: E402
from livepeer_ai.utils import unmarshal_json  # noqa: E402

from tests.livepeer.lp_support import TOKEN, close_sdk, data_url, decode_data_url, photo, png, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = Path(__file__).resolve().parent / "graphs"


@pytest.fixture
def sdk() -> Iterator[Callable[..., Livepeer]]:
    """`sdk(service, token=TOKEN)`: the SDK pointed at a local service, closed by this
    test's teardown (see `close_sdk`), never left for the garbage collector."""
    made: list[Livepeer] = []

    def make(service, token: str = TOKEN) -> Livepeer:
        made.append(Livepeer(http_bearer=token, server_url=service.url, timeout_ms=60_000))
        return made[-1]

    yield make
    for client in made:
        close_sdk(client)


def _image_part() -> dict:
    return {"file_name": "in.png", "content": png(photo()), "content_type": "image/png"}


def _go_livepeer_multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    """A multipart body as go-livepeer writes it: the image part first, floats as %f."""
    boundary = "goLivepeerBoundary7MA4YWxkTrZu0gW"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    ]
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def edges(start_service):
    service = start_service(env={"CAPGRAPH_AUTH_TOKEN": TOKEN})
    service.wait_ready()
    return service


def test_image_to_image_through_the_sdk(edges, sdk):
    client = sdk(edges)
    result = client.generate.image_to_image(
        request={"prompt": "edges", "image": _image_part(), "strength": 0.0, "seed": 7}
    )
    [image] = result.image_response.images
    # No safety checker in this graph: nsfw is false because nothing checked, and the answer says so.
    assert image.seed == 7 and image.nsfw is False
    headers = result.http_meta.response.headers
    assert headers["x-capgraph-safety"] == "unchecked"
    assert "no safety checker ran in graph 'edges-live'" in headers["warning"]  # the SDK sends safety_check=true
    assert json.loads(result.http_meta.response.text)["images"][0]["nsfw_checked"] is False
    out = decode_data_url(image.url)
    assert out.shape == (96, 128, 3)
    # strength -> blend.opacity 0: the answer is the edge map, the graph's other output
    upscaled = client.generate.upscale(request={"prompt": "x", "image": _image_part()})
    assert np.array_equal(out, decode_data_url(upscaled.image_response.images[0].url))


def test_without_a_checker_a_request_that_asks_for_none_gets_no_warning(edges):
    answer = httpx.post(
        f"{edges.url}/upscale",
        files={"image": ("in.png", png(photo()), "image/png")},
        data={"prompt": "p", "safety_check": "false"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-capgraph-safety"] == "unchecked" and "warning" not in answer.headers
    [image] = answer.json()["images"]
    assert image["nsfw"] is False and image["nsfw_checked"] is False


def test_the_checker_answers_nsfw_and_blacks_out_what_it_flags(tiny_models, start_service, sdk):
    from capgraph.nodes.safety import FLAGGED_COLOUR

    service = start_service(GRAPHS / "check_tiny.yaml", env={"CAPGRAPH_AUTH_TOKEN": TOKEN})
    service.wait_ready(timeout=120)
    client = sdk(service)
    magenta = {"file_name": "m.png", "content": png(np.full((96, 128, 3), FLAGGED_COLOUR, np.uint8))}
    flagged = client.generate.image_to_image(request={"prompt": "p", "image": magenta, "seed": 1})
    [image] = flagged.image_response.images
    assert image.nsfw is True and not decode_data_url(image.url).any()  # black_out: true in the graph
    assert flagged.http_meta.response.headers["x-capgraph-safety"] == "checked"
    assert "warning" not in flagged.http_meta.response.headers
    clean = client.generate.upscale(request={"prompt": "p", "image": _image_part(), "seed": 1})
    [image] = clean.image_response.images
    assert image.nsfw is False and decode_data_url(image.url).any()
    assert clean.http_meta.response.headers["x-capgraph-safety"] == "checked"
    assert json.loads(clean.http_meta.response.text)["images"][0]["nsfw_checked"] is True
    # safety_check false: the checker is in the graph and still runs, so the verdict is still its own.
    # (A graph can skip it by mapping safety_check to a Bool input that gates the node, once branches land.)
    unasked = client.generate.image_to_image(request={"prompt": "p", "image": magenta, "safety_check": False})
    assert unasked.image_response.images[0].nsfw is True
    assert unasked.http_meta.response.headers["x-capgraph-safety"] == "checked"


def test_the_shipped_safe_text_to_image_graph_answers_from_its_checker(tiny_models, start_service, sdk):
    service = start_service(ROOT / "graphs" / "txt2img.yaml", env={"CAPGRAPH_AUTH_TOKEN": TOKEN})
    service.wait_ready(timeout=120)
    result = sdk(service).generate.text_to_image(
        request={
            "prompt": "a red cube",
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "seed": 3,
            "num_images_per_prompt": 2,
            "model_id": "stabilityai/stable-diffusion-xl-base-1.0",
        }
    )
    assert [(i.seed, i.nsfw) for i in result.image_response.images] == [(3, False), (4, False)]
    assert decode_data_url(result.image_response.images[0].url).shape == (64, 64, 3)
    assert result.http_meta.response.headers["x-capgraph-safety"] == "checked"

    # safety_check false turns the checker's branch off: it does not run, and nothing claims it did
    small = {"prompt": "a red cube", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 3}
    unchecked = sdk(service).generate.text_to_image(request=small | {"safety_check": False})
    assert unchecked.http_meta.response.headers["x-capgraph-safety"] == "unchecked"
    assert json.loads(unchecked.http_meta.response.text)["images"][0]["nsfw_checked"] is False
    same = decode_data_url(unchecked.image_response.images[0].url)
    assert np.array_equal(same, decode_data_url(result.image_response.images[0].url))  # nothing flagged: same image

    # an adapter the graph allows changes the image; any other name, a path above all, is refused naming `loras`
    styled = sdk(service).generate.text_to_image(request=small | {"loras": '{"nerijs/pixel-art-xl": 1.0}'})
    assert not np.array_equal(decode_data_url(styled.image_response.images[0].url), same)
    for loras in ('{"someone/else-lora": 1.0}', '{"/etc/passwd": 1.0}'):
        with pytest.raises(errors.HTTPError) as refused:
            sdk(service).generate.text_to_image(request=small | {"loras": loras})
        assert "loras" in refused.value.data.detail.msg  # the SDK raises HTTPError on 400 and 422 alike


def test_go_livepeer_multipart_with_image_first_and_percent_f_floats(edges, sdk):
    body, content_type = _go_livepeer_multipart(
        {
            "prompt": "edges",
            "model_id": "",
            "strength": "0.000000",
            "seed": "7",
            "num_inference_steps": "100",
            "loras": "",
        },
        png(photo()),
    )
    answer = httpx.post(
        f"{edges.url}/image-to-image/",
        content=body,  # trailing-slash twin
        headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    [image] = answer.json()["images"]
    client = sdk(edges)
    same = client.generate.image_to_image(
        request={"prompt": "edges", "image": _image_part(), "strength": 0.0, "seed": 7}
    )
    assert image["seed"] == 7
    assert np.array_equal(decode_data_url(image["url"]), decode_data_url(same.image_response.images[0].url))


def test_several_images_get_consecutive_seeds_and_an_unset_seed_is_picked(edges, sdk):
    client = sdk(edges)
    result = client.generate.image_to_image(
        request={"prompt": "p", "image": _image_part(), "seed": 40, "num_images_per_prompt": 3}
    )
    assert [i.seed for i in result.image_response.images] == [40, 41, 42]
    picked = client.generate.image_to_image(request={"prompt": "p", "image": _image_part()})
    assert isinstance(picked.image_response.images[0].seed, int)


def test_sdk_error_paths(edges, sdk):
    client, stranger = sdk(edges), sdk(edges, token="nope")
    with pytest.raises(errors.HTTPError) as wrong_token:
        stranger.generate.image_to_image(request={"prompt": "p", "image": _image_part()})
    assert wrong_token.value.data.detail.msg == "Invalid bearer token."
    with pytest.raises(errors.HTTPError) as wrong_model:
        client.generate.image_to_image(
            request={"prompt": "p", "image": _image_part(), "model_id": "timbrooks/instruct-pix2pix"}
        )
    assert (
        wrong_model.value.data.detail.msg
        == "pipeline configured with edges-live but called with timbrooks/instruct-pix2pix."
    )
    with pytest.raises(errors.HTTPError) as bad_value:  # num_inference_steps -> edges.low_threshold, at most 255
        client.generate.image_to_image(request={"prompt": "p", "image": _image_part(), "num_inference_steps": 300})
    assert "low_threshold" in bad_value.value.data.detail.msg
    with pytest.raises(errors.HTTPError) as not_an_image:
        client.generate.image_to_image(
            request={"prompt": "p", "image": {"file_name": "x.png", "content": b"not a png"}}
        )
    assert "image" in not_an_image.value.data.detail.msg


def test_missing_fields_are_a_422_the_sdk_can_parse(edges):
    answer = httpx.post(
        f"{edges.url}/image-to-image",
        files={"image": ("in.png", png(photo()), "image/png")},
        data={"strength": "abc"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 422
    parsed = unmarshal_json(answer.text, errors.HTTPValidationErrorData)
    assert {tuple(d.loc) for d in parsed.detail} == {("body", "strength"), ("body", "prompt")}


def test_loading_and_busy_are_503_sdk_errors(start_service, sdk):
    service = start_service(hold=True)
    client, other = sdk(service, token="unchecked"), sdk(service, token="unchecked")
    with pytest.raises(errors.SDKError) as loading:
        client.generate.upscale(request={"prompt": "p", "image": _image_part()})
    assert loading.value.status_code == 503
    service.backend.gate.set()
    service.wait_ready()
    service.backend.runs_open.clear()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.generate.upscale, request={"prompt": "p", "image": _image_part()})
        wait_for(lambda: service.backend.runs_started == 1)
        with pytest.raises(errors.SDKError) as busy:
            other.generate.upscale(request={"prompt": "p", "image": _image_part()})
        assert busy.value.status_code == 503 and json.loads(busy.value.body) == {"detail": {"msg": "busy"}}
        service.backend.runs_open.set()
        assert first.result().image_response.images


def test_version_and_hardware_info(edges):
    assert httpx.get(f"{edges.url}/version").json() == {
        "pipeline": "image-to-image",
        "model_id": "edges-live",
        "version": "v1",
    }
    info = httpx.get(f"{edges.url}/hardware/info").json()
    assert (
        info["pipeline"] == "image-to-image" and info["model_id"] == "edges-live" and isinstance(info["gpu_info"], dict)
    )


def test_text_to_image_on_tiny_sdxl(tiny_models, start_service, sdk):
    service = start_service(GRAPHS / "t2i_tiny.yaml", env={"CAPGRAPH_AUTH_TOKEN": TOKEN})
    service.wait_ready(timeout=120)
    client = sdk(service)
    request = {
        "prompt": "a red cube",
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "seed": 3,
        "model_id": "stabilityai/stable-diffusion-xl-base-1.0",
    }
    first = client.generate.text_to_image(request=request).image_response.images[0]
    again = client.generate.text_to_image(request=request).image_response.images[0]
    assert first.seed == 3 and decode_data_url(first.url).shape == (64, 64, 3)
    assert first.url == again.url  # same seed, same image
    other = client.generate.text_to_image(request=request | {"seed": 4}).image_response.images[0]
    assert other.url != first.url
    with pytest.raises(errors.HTTPError) as empty:
        client.generate.text_to_image(request=request | {"prompt": ""})
    assert empty.value.data.detail.msg == "Prompt must be provided."


def test_segment_anything_2_on_tiny_sam2(tiny_models, start_service, sdk):
    section = {
        "routes": {
            "segment-anything-2": {
                "image": "image",
                "point_coords": "points",
                "box": "boxes",
                "multimask_output": "sam.multimask_output",
                "masks": "masks",
            }
        }
    }
    service = start_service(ROOT / "graphs" / "segment.yaml", section=section)
    service.wait_ready(timeout=120)
    client = sdk(service, token="unchecked")
    result = client.generate.segment_anything2(
        request={"image": _image_part(), "point_coords": "[[80, 60]]", "point_labels": "[1]", "multimask_output": True}
    )
    masks, scores, logits = (
        json.loads(v) for v in (result.masks_response.masks, result.masks_response.scores, result.masks_response.logits)
    )
    assert np.asarray(masks).shape[0] == 3 and len(scores) == 3 and np.asarray(logits).shape[0] == 3
    assert scores == sorted(scores, reverse=True)
    assert np.asarray(masks).shape[1:] == (120, 160)
    boxed = client.generate.segment_anything2(
        request={"image": _image_part(), "box": "[10, 10, 90, 70]", "multimask_output": False}
    )
    assert len(json.loads(boxed.masks_response.scores)) == 1
    with pytest.raises(errors.HTTPError) as bad_json:
        client.generate.segment_anything2(request={"image": _image_part(), "point_coords": "[[80, 60"})
    assert "point_coords" in bad_json.value.data.detail.msg
    # The capability is named like the route: a native JSON job on the same path is a BYOC job.
    job = httpx.post(
        f"{service.url}/segment-anything-2", json={"inputs": {"image": data_url(), "points": [[80, 60, 1]]}}, timeout=30
    )
    assert job.status_code == 200, job.text
    assert len(job.json()["outputs"]["masks"]["scores"]) == 3


def test_segment_anything_2_prompts_as_node_params(tiny_models, start_service, sdk):
    section = {
        "routes": {
            "segment-anything-2": {
                "image": "image",
                "point_coords": "sam.point_coords",
                "point_labels": "sam.point_labels",
                "box": "sam.box",
            }
        }
    }
    service = start_service(ROOT / "graphs" / "segment.yaml", section=section)
    service.wait_ready(timeout=120)
    client = sdk(service, token="unchecked")
    result = client.generate.segment_anything2(
        request={
            "image": _image_part(),
            "point_coords": "[[80, 60], [20, 20]]",
            "point_labels": "[1, 0]",
            "box": "[10, 10, 150, 110]",
        }
    )
    assert len(json.loads(result.masks_response.scores)) == 3
    with pytest.raises(errors.HTTPError) as mismatch:
        client.generate.segment_anything2(
            request={"image": _image_part(), "point_coords": "[[80, 60]]", "point_labels": "[1, 0]"}
        )
    assert "point_labels" in mismatch.value.data.detail.msg


def test_text_to_image_loras_on_tiny_sdxl(tiny_models, start_service, sdk):
    """ai-runner's `loras` is a JSON object in a string; only the graph's allowed adapters."""
    service = start_service(GRAPHS / "t2i_lora_tiny.yaml", env={"CAPGRAPH_AUTH_TOKEN": TOKEN})
    service.wait_ready(timeout=120)
    client = sdk(service)
    request = {"prompt": "a red cube", "seed": 3, "model_id": "stabilityai/stable-diffusion-xl-base-1.0"}

    def image(**extra) -> str:
        return client.generate.text_to_image(request=request | extra).image_response.images[0].url

    plain, none = image(), image(loras="")  # "" = no adapters
    pixel = image(loras='{"nerijs/pixel-art-xl": 1.2}')
    assert plain == none and pixel != plain
    assert image(loras='{"nerijs/pixel-art-xl": 1.2}') == pixel
    assert image(loras='{"latent-consistency/lcm-lora-sdxl": 1.0, "nerijs/pixel-art-xl": 1.2}') not in (plain, pixel)
    for bad, fragment in (
        ('{"/etc/passwd": 1.0}', "not one this graph allows"),
        ('{"someone/else": 1.0}', "not one this graph allows"),
        ("{not json", "JSON object"),
        ('["nerijs/pixel-art-xl"]', "JSON object"),
        ('{"nerijs/pixel-art-xl": 9}', "less than or equal to 4"),
    ):
        with pytest.raises(errors.HTTPError) as refused:
            client.generate.text_to_image(request=request | {"loras": bad})
        # HTTPError is the SDK's 400/401/500; the message names the request's own field
        assert refused.value.data.detail.msg.startswith("loras:") and fragment in refused.value.data.detail.msg
