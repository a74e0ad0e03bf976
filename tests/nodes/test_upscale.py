"""The upscale family as a user meets it: a tiny ESRGAN through spandrel (a plain .pth file)
and a tiny Stable Diffusion x4 upscaler (saved like the hub repo, loaded with
from_pretrained) each make frames 4x larger, on the CPU."""

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from capgraph.engine.executor import Executor
from capgraph.engine.types import PortType, check_value
from capgraph.engine.validate import load_plan
from capgraph.engine.weights import ModelMissing, split_weights, tiny_model
from capgraph.nodes import upscale
from capgraph.nodes.upscale import Upscale, UpscaleParams, tiny_esrgan

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


def frame(seed: int = 0, height: int = 24, width: int = 32) -> dict:
    return {"image": np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)}


def loaded(**params: object) -> Upscale:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        node = Upscale(UpscaleParams(**params), "up")
        node.load("cpu", "float32")
    return node


@pytest.fixture(scope="module")
def esrgan() -> Upscale:
    return loaded(method="esrgan")


@pytest.fixture(scope="module")
def sd_x4() -> Upscale:
    return loaded(method="sd_x4", steps=2)


def differ(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("method", ["esrgan", "sd_x4"])
def test_a_batch_of_frames_comes_back_4x_larger(method: str, esrgan: Upscale, sd_x4: Upscale) -> None:
    node = {"esrgan": esrgan, "sd_x4": sd_x4}[method]
    frames = [frame(0), frame(1, 16, 40)]  # two sizes: two groups, one call each
    out = node.run_batch(frames, [node.params] * 2)
    for source, result in zip(frames, out):
        assert set(result) == {"image"} and check_value(PortType.IMAGE, result["image"]) is None
        height, width = source["image"].shape[:2]
        assert result["image"].shape == (4 * height, 4 * width, 3)
        assert result["image"].std() > 0
    assert node.weight_bytes > 0


def test_esrgan_batch_equals_frames_one_by_one(esrgan: Upscale) -> None:
    frames = [frame(2), frame(3)]
    batch = esrgan.run_batch(frames, [esrgan.params] * 2)
    for source, batched in zip(frames, batch):
        assert differ(esrgan.run_batch([source], [esrgan.params])[0]["image"], batched["image"]) <= 1


def test_sd_x4_is_seeded_per_frame_and_follows_the_prompt_port(sd_x4: Upscale) -> None:
    p = sd_x4.params
    seeded = [p.model_copy(update={"seed": 4}), p.model_copy(update={"seed": 5})]
    batch = sd_x4.run_batch([frame(4), frame(4)], seeded)
    again = sd_x4.run_batch([frame(4), frame(4)], seeded)
    alone = sd_x4.run_batch([frame(4)], seeded[1:])[0]["image"]
    assert np.array_equal(batch[0]["image"], again[0]["image"])
    assert differ(batch[1]["image"], alone) <= 2
    assert differ(batch[0]["image"], batch[1]["image"]) > 0
    prompted = sd_x4.run_batch([{**frame(4), "prompt": "sharp bricks"}], seeded[:1])[0]["image"]
    assert differ(prompted, batch[0]["image"]) > 0


def test_local_files_and_folders_load_without_the_tiny_switch(
    esrgan: Upscale, sd_x4: Upscale, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    weights = tiny_model("esrgan-x4", tiny_esrgan) / "model.pth"
    folder = tiny_model("sd-x4-upscaler", upscale.tiny_x4)
    assert (folder / "model_index.json").exists() and (folder / "low_res_scheduler").is_dir()
    for reference, params in (
        (esrgan, {"method": "esrgan", "model": str(weights)}),
        (sd_x4, {"method": "sd_x4", "model": str(folder), "steps": 2}),
    ):
        node = Upscale(UpscaleParams(**params), "up")
        node.load("cpu", "float32")
        expected = reference.run_batch([frame(6)], [reference.params])[0]["image"]
        assert differ(node.run_batch([frame(6)], [node.params])[0]["image"], expected) <= 1


def test_a_missing_model_offline_names_the_node_and_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelMissing, match="node 'big': model 'capgraph-tests/no-such-upscaler'"):
        Upscale(UpscaleParams(method="sd_x4", model="capgraph-tests/no-such-upscaler"), "big").load("cpu", "float32")
    with pytest.raises(ModelMissing, match="node 'big': model 'capgraph-tests/no-such-esrgan'"):
        Upscale(UpscaleParams(model="capgraph-tests/no-such-esrgan/x4.pth"), "big").load("cpu", "float32")
    with pytest.raises(FileNotFoundError, match="node 'big': weights file '/no/such/x4.pth' does not exist"):
        Upscale(UpscaleParams(model="/no/such/x4.pth"), "big").load("cpu", "float32")


def test_model_names_and_request_params() -> None:
    assert split_weights("ai-forever/Real-ESRGAN/RealESRGAN_x4.pth") == ("ai-forever/Real-ESRGAN", "RealESRGAN_x4.pth")
    assert split_weights("/models/x4.safetensors") == ("/models/x4.safetensors", None)
    assert Upscale(UpscaleParams()).models() == [
        "ai-forever/Real-ESRGAN/RealESRGAN_x4.pth"
    ]  # prepare fetches that file alone
    assert Upscale(UpscaleParams(method="sd_x4")).models() == ["stabilityai/stable-diffusion-x4-upscaler"]
    assert {"model", "method"}.isdisjoint(Upscale.request_params) and Upscale.request_params <= set(
        UpscaleParams.model_fields
    )
    for bad in ({"method": "bicubic"}, {"noise_level": 351}, {"steps": 0}, {"model": ""}):
        with pytest.raises(ValidationError):
            UpscaleParams(**bad)


def test_upscale_graph_runs_end_to_end(tiny_models: Path) -> None:
    executor = Executor(load_plan(GRAPHS / "upscale.yaml"), device="cpu")
    result = executor.run([frame(7), {**frame(8), "prompt": "a cat"}], params={"upscale.steps": 2})
    for out in result.outputs:
        assert out["image"].shape == (96, 128, 3) and out["image"].dtype == np.uint8
