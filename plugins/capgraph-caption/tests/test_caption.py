"""The caption family as a user meets it once `pip install ./plugins/capgraph-caption` ran:
listed with its package, BLIP and BLIP-2 captions on tiny models, the recaption graph in
one process, and Livepeer's /image-to-text called by the livepeer-ai SDK."""

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "capgraph_caption", reason="the capgraph-caption plug-in is not installed (pip install ./plugins/capgraph-caption)"
)

from capgraph.engine.executor import Executor  # noqa: E402
from capgraph.engine.registry import catalogue, origin  # noqa: E402
from capgraph.engine.validate import load_plan  # noqa: E402

RECAPTION = Path(__file__).resolve().parents[1] / "examples" / "recaption.yaml"


def photo(seed: int = 0, side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((side, side + 16, 3), 40, np.uint8)
    image[side // 4 : 3 * side // 4, side // 4 : side // 2] = rng.integers(80, 255, 3, dtype=np.uint8)
    return image


def test_the_catalogue_lists_caption_with_its_package_and_version() -> None:
    from importlib.metadata import version

    family = catalogue()["caption"]
    assert family.__module__ == "capgraph_caption.caption"
    found = origin("caption")
    assert (found.package, found.version, found.via) == (
        "capgraph-caption",
        version("capgraph-caption"),
        "entry point caption",
    )
    assert origin("template").via == "built-in"
    assert set(family.tiny_models()) == {"blip-caption", "blip2-caption"}


@pytest.mark.parametrize("model", ["Salesforce/blip-image-captioning-large", "Salesforce/blip2-opt-2.7b"])
def test_a_batch_captions_like_its_frames_one_by_one_with_and_without_a_prompt(tiny_models, model: str) -> None:
    family = catalogue()["caption"]
    node = family(family.Params(model=model, max_new_tokens=6, num_beams=2), "describe")
    node.load("cpu", "float32")
    frames = [{"image": photo(1)}, {"image": photo(2, 48)}, {"image": photo(3), "prompt": "a photo of"}]
    batch = node.run_batch(frames, [node.params] * 3)
    one_by_one = [node.run_batch([f], [node.params])[0] for f in frames]
    assert batch == one_by_one and all(isinstance(o["text"], str) for o in batch)
    assert batch[2]["text"].lower().startswith("a photo of")
    bare = node.params.model_copy(update={"keep_prompt": False})
    assert node.run_batch(frames[2:], [bare])[0]["text"] == batch[2]["text"][len("a photo of") :].strip()
    assert node.model.config.model_type == ("blip-2" if "blip2" in model else "blip")


def test_bounds_on_generation_params_are_validation_errors() -> None:
    from pydantic import ValidationError

    Params = catalogue()["caption"].Params
    for bad in ({"max_new_tokens": 0}, {"max_new_tokens": 1000}, {"num_beams": 9}, {"prompt": "x" * 501}):
        with pytest.raises(ValidationError):
            Params(**bad)


def test_the_recaption_graph_runs_in_process(tiny_models) -> None:
    executor = Executor(load_plan(RECAPTION))
    out = executor.run([{"image": photo(4)}], {"redraw.steps": 2}).outputs[0]
    assert out["image"].shape == (64, 80, 3) and out["image"].dtype == np.uint8
    assert isinstance(out["caption"], str)
    styled = executor.run([{"image": photo(4)}], {"redraw.steps": 2, "style": "{caption}, ink"}).outputs[0]
    assert styled["caption"] == out["caption"]  # the caption is the same frame's; only the prompt changed


# -- Livepeer's ai-runner /image-to-text, through the livepeer-ai SDK -----------------------


@pytest.fixture
def sdk() -> Iterator[Callable]:
    """`sdk(url)`: the SDK pointed at a local service, closed by this test's teardown."""
    livepeer_ai = pytest.importorskip("livepeer_ai")
    from tests.livepeer.lp_support import close_sdk

    made = []

    def make(url: str):
        made.append(livepeer_ai.Livepeer(http_bearer="unchecked", server_url=url, timeout_ms=60_000))
        return made[-1]

    yield make
    for client in made:
        close_sdk(client)


@pytest.fixture
def recaption_service(tiny_models) -> Iterator[str]:
    import httpx

    from capgraph.livepeer.local import local_app
    from capgraph.livepeer.settings import settings_from_file
    from tests.livepeer.lp_support import ServerThread, wait_for

    plan = load_plan(RECAPTION)
    server = ServerThread(local_app(plan, settings_from_file(RECAPTION, plan))).start()
    try:
        wait_for(lambda: httpx.get(f"{server.url}/ready").status_code == 200, timeout=180)
        yield server.url
    finally:
        server.stop()


def test_image_to_text_through_the_sdk(recaption_service, sdk) -> None:
    from livepeer_ai.models import errors

    from tests.livepeer.lp_support import png

    client = sdk(recaption_service)
    image = {"file_name": "in.png", "content": png(photo(5)), "content_type": "image/png"}
    plain = client.generate.image_to_text(request={"image": image})
    assert isinstance(plain.image_to_text_response.text, str)
    guided = client.generate.image_to_text(request={"image": image, "prompt": "a painting of"})
    assert guided.image_to_text_response.text.lower().startswith("a painting of")
    with pytest.raises(errors.HTTPError) as wrong_model:
        client.generate.image_to_text(request={"image": image, "model_id": "Salesforce/blip-image-captioning-base"})
    assert wrong_model.value.data.detail.msg == (
        "pipeline configured with Salesforce/blip-image-captioning-large but called "
        "with Salesforce/blip-image-captioning-base."
    )
    with pytest.raises(errors.HTTPError) as not_an_image:
        client.generate.image_to_text(request={"image": {"file_name": "x.png", "content": b"not a png"}})
    assert "image" in not_an_image.value.data.detail.msg
