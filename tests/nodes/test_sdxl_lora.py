"""LoRA adapters on SDXL: tiny adapters built from a peft config on the tiny UNet, saved in
the diffusers LoRA format and loaded back through `load_lora_weights`, as real ones are."""

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from capgraph.engine.errors import InputError
from capgraph.engine.weights import tiny_model
from capgraph.nodes import sdxl
from capgraph.nodes.sdxl import Sdxl, SdxlParams

FAST = {"width": 64, "height": 64, "steps": 2, "prompt": "a red house"}
ALLOWED = {"pixel": "nerijs/pixel-art-xl", "lcm": "latent-consistency/lcm-lora-sdxl", "ink": "capgraph-tests/ink"}


def loaded(**params: object) -> Sdxl:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        node = Sdxl(SdxlParams(**{**FAST, "allowed_loras": ALLOWED, **params}), "gen")
        node.load("cpu", "float32")
    return node


@pytest.fixture(scope="module")
def node() -> Sdxl:
    return loaded()


def differ(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def run(node: Sdxl, loras: dict[str, float], frame: dict | None = None, **update: object) -> np.ndarray:
    p = node.params.model_copy(update={"loras": loras, **update})
    return node.run_batch([frame or {}], [p])[0]["image"]


def test_an_adapter_changes_the_image_and_the_same_adapter_gives_the_same_image(
    node: Sdxl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPGRAPH_MODELS", "tiny")
    without = run(node, {})
    pixel = run(node, {"pixel": 1.0})
    loads = node.adapters.loads
    assert differ(without, pixel) > 5
    assert np.array_equal(run(node, {"pixel": 1.0}), pixel)  # the same adapter twice: the same image
    assert node.adapters.loads == loads  # and it was not loaded again
    assert differ(run(node, {"ink": 1.0}), pixel) > 5  # two adapter ids: two tiny adapters
    assert differ(run(node, {"pixel": 0.5}), pixel) > 0  # the weight matters
    assert np.array_equal(run(node, {}), without)  # none: the plain model again


def test_a_mixed_batch_gives_each_frame_its_solo_image(node: Sdxl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPGRAPH_MODELS", "tiny")
    sets = [{}, {"pixel": 1.0}, {"pixel": 0.8, "ink": 1.2}]
    params = [node.params.model_copy(update={"loras": sets[i % 3], "seed": i}) for i in range(8)]
    batch = node.run_batch([{} for _ in params], params)
    loads = node.adapters.loads
    for p, out in zip(params, batch):
        alone = node.run_batch([{}], [p])[0]["image"]
        assert differ(out["image"], alone) <= 2  # batched matmuls may round differently
    assert node.adapters.loads == loads  # never reloaded per frame
    assert (
        differ(batch[0]["image"], node.run_batch([{}], [params[0].model_copy(update={"loras": sets[1]})])[0]["image"])
        > 5
    )


def test_img2img_and_controlnet_take_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPGRAPH_MODELS", "tiny")
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    net = loaded(controlnets=[{"model": "diffusers/controlnet-depth-sdxl-1.0"}])
    plain = loaded()
    for node, frame in (
        (plain, {"image": image}),
        (net, {"control_image": image}),
        (net, {"image": image, "control_image": image}),
    ):
        assert differ(run(node, {}, frame, strength=0.9), run(node, {"pixel": 1.0}, frame, strength=0.9)) > 5


def test_the_loaded_set_is_bounded_least_recently_used_leaving_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPGRAPH_MODELS", "tiny")
    many = {f"a{i}": f"capgraph-tests/adapter-{i}" for i in range(6)}
    node = loaded(allowed_loras=many, max_loaded_loras=4, steps=1)
    first = run(node, {"a0": 1.0})
    for i in range(1, 5):
        run(node, {f"a{i}": 1.0})
    adapters = node.adapters
    folders = list(adapters.loaded)
    assert len(folders) == 4 and node.lora_folders["capgraph-tests/adapter-0"] not in folders  # a0 left first
    assert np.array_equal(run(node, {"a0": 1.0}), first)  # loaded again, the same image
    assert len(adapters.loaded) == 4


def test_requests_may_name_only_allowed_adapters() -> None:
    with pytest.raises(ValidationError, match="not one this graph allows"):
        SdxlParams(allowed_loras=ALLOWED, loras={"/etc/passwd": 1.0})
    with pytest.raises(ValidationError, match="not one this graph allows"):
        SdxlParams(loras={"nerijs/pixel-art-xl": 1.0})  # an id is not allowed by being a real one
    for bad in ({"pixel": 4.5}, {"pixel": -5}, dict.fromkeys(["pixel", "lcm", "ink", "a", "b"], 1.0)):
        with pytest.raises(ValidationError):
            SdxlParams(allowed_loras={**ALLOWED, "a": "x/a", "b": "x/b"}, loras=bad)
    listed = SdxlParams(allowed_loras=["nerijs/pixel-art-xl", "/models/my-lora"], loras={"nerijs/pixel-art-xl": 1.2})
    assert listed.allowed_loras == {"nerijs/pixel-art-xl": "nerijs/pixel-art-xl", "/models/my-lora": "/models/my-lora"}
    assert "loras" in Sdxl.request_params and {"allowed_loras", "max_loaded_loras"}.isdisjoint(Sdxl.request_params)
    with pytest.raises(ValidationError):
        SdxlParams(max_loaded_loras=2)  # fewer than one frame may run with


def test_prepare_fetches_the_allowed_adapters_and_shared_nodes_allow_the_union() -> None:
    node = Sdxl(SdxlParams(allowed_loras=ALLOWED), "gen")
    assert node.models()[-3:] == list(ALLOWED.values())
    other = SdxlParams(allowed_loras={"mine": "/models/mine"}, max_loaded_loras=12)
    merged, _ = Sdxl.for_callers([(node.params, frozenset()), (other, frozenset())])
    assert merged.allowed_loras == {**ALLOWED, "mine": "/models/mine"} and merged.max_loaded_loras == 12
    with pytest.raises(ValueError, match="LoRA 'pixel'"):
        Sdxl.for_callers([(node.params, frozenset()), (SdxlParams(allowed_loras={"pixel": "x/y"}), frozenset())])


def test_an_allowed_adapter_not_on_this_machine_is_a_4xx_naming_prepare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # even online: a request never starts a download
    base = tiny_model("sdxl", sdxl.tiny_base)
    folder = tiny_model(*sdxl.tiny_lora_for("local"))
    allowed = {"local": str(folder), "hub": "capgraph-tests/not-cached-lora", "gone": "/no/such/folder"}
    node = Sdxl(SdxlParams(**{**FAST, "steps": 1, "model": str(base), "allowed_loras": allowed}), "gen")
    node.load("cpu", "float32")
    assert differ(run(node, {}), run(node, {"local": 1.0})) > 5  # a local folder loads through the same path
    for name in ("hub", "gone"):
        with pytest.raises(InputError, match="capgraph prepare") as refused:
            run(node, {name: 1.0})
        assert refused.value.field == "params.gen.loras" and 400 <= refused.value.status < 500


def test_the_tiny_adapter_is_in_the_diffusers_lora_format(tmp_path: Path) -> None:
    sdxl.tiny_lora(tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").exists()
    assert "sdxl-lora" not in Sdxl.tiny_models()  # each id builds its own on first use
