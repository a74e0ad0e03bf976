"""The sdxl family as a user meets it: tiny SDXL and ControlNet models, saved like the hub
repos and loaded back through from_pretrained, generate seeded images in every mode the
wiring picks (text-to-image, ControlNet, img2img, inpainting), on the CPU."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from capgraph.engine.errors import InputError
from capgraph.engine.executor import Executor
from capgraph.engine.node import example_value
from capgraph.engine.types import PortType, check_value
from capgraph.engine.validate import load_plan
from capgraph.engine.weights import ModelMissing, tiny_model
from capgraph.nodes import sdxl
from capgraph.nodes.sdxl import SCHEDULERS, Sdxl, SdxlParams

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
DEPTH_CN = "diffusers/controlnet-depth-sdxl-1.0"
FAST = {"width": 64, "height": 64, "steps": 2, "prompt": "a red house"}


def control(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def loaded(**params: object) -> Sdxl:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        node = Sdxl(SdxlParams(**{**FAST, **params}), "gen")
        node.load("cpu", "float32")
    return node


@pytest.fixture(scope="module")
def plain() -> Sdxl:
    return loaded()


@pytest.fixture(scope="module")
def controlled() -> Sdxl:
    return loaded(controlnets=[{"model": DEPTH_CN, "scale": 0.7}])


def differ(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_a_controlnet_batch_gives_one_image_per_frame(controlled: Sdxl) -> None:
    p = controlled.params
    out = controlled.run_batch(
        [{"control_image": control(0)}, {"control_image": control(1)}], [p, p.model_copy(update={"seed": 1})]
    )
    assert len(out) == 2
    for result in out:
        assert set(result) == {"image"} and check_value(PortType.IMAGE, result["image"]) is None
        assert result["image"].shape == (64, 64, 3) and result["image"].dtype == np.uint8
        assert result["image"].std() > 0  # an image, not a flat fill
    assert controlled.weight_bytes > 0
    assert controlled.models() == ["stabilityai/stable-diffusion-xl-base-1.0", DEPTH_CN]


def test_same_seed_same_image_and_a_frame_does_not_depend_on_its_batch_mates(plain: Sdxl) -> None:
    p = plain.params
    seeded = [p.model_copy(update={"seed": 7}), p.model_copy(update={"seed": 8})]
    batch = plain.run_batch([{}, {}], seeded)
    again = plain.run_batch([{}, {}], seeded)
    alone = plain.run_batch([{}], seeded[1:])[0]["image"]
    assert np.array_equal(batch[0]["image"], again[0]["image"])
    assert differ(batch[1]["image"], alone) <= 2  # batched matmuls may round differently
    assert differ(batch[0]["image"], batch[1]["image"]) > 20  # the seed matters


def test_the_prompt_port_overrides_the_prompt_param(plain: Sdxl) -> None:
    p = plain.params
    from_port = plain.run_batch([{"prompt": "a blue boat"}], [p])[0]["image"]
    from_param = plain.run_batch([{}], [p.model_copy(update={"prompt": "a blue boat"})])[0]["image"]
    default = plain.run_batch([{}], [p])[0]["image"]
    assert np.array_equal(from_port, from_param) and differ(from_port, default) > 0


def test_wiring_an_image_gives_img2img_and_a_mask_gives_inpainting(plain: Sdxl, controlled: Sdxl) -> None:
    image, mask = control(3), example_value(PortType.MASK, 64)
    p = plain.params.model_copy(update={"strength": 0.5, "steps": 4, "width": None, "height": None})
    img2img = plain.run_batch([{"image": image[:48]}], [p])[0]["image"]
    assert img2img.shape == (48, 64, 3)  # size follows the wired image
    inpainted = plain.run_batch([{"image": image, "mask": mask}], [p])[0]["image"]
    assert inpainted.shape == (64, 64, 3)
    both = controlled.run_batch([{"image": image, "mask": mask, "control_image": control(4)}], [controlled.params])[0][
        "image"
    ]
    assert both.shape == (64, 64, 3)
    assert set(plain.pipes) == {("t2i", ()), ("img2img", ()), ("inpaint", ())}  # by mode and ControlNets
    assert all(pipe.unet is plain.base.unet and pipe.vae is plain.base.vae for pipe in plain.pipes.values())
    with pytest.raises(InputError, match="strength 0.2 x steps 2"):
        plain.run_batch([{"image": image}], [plain.params.model_copy(update={"strength": 0.2})])


def test_nodes_on_the_same_checkpoint_share_one_base_pipeline(plain: Sdxl, controlled: Sdxl) -> None:
    assert controlled.base is plain.base
    assert controlled.pipes["t2i", (DEPTH_CN,)].controlnet is controlled.controlnets[0]


def test_wiring_must_match_the_controlnets(plain: Sdxl, controlled: Sdxl) -> None:
    with pytest.raises(ValueError, match="has 1 ControlNet\\(s\\), so port 'control_image' must be wired"):
        controlled.run_batch([{}], [controlled.params])
    with pytest.raises(ValueError, match="port 'control_image' is wired but the node has 0 ControlNet"):
        plain.run_batch([{"control_image": control()}], [plain.params])
    with pytest.raises(ValueError, match="'mask' is wired but 'image' is not"):
        plain.run_batch([{"mask": example_value(PortType.MASK, 64)}], [plain.params])


def test_two_controlnets_take_one_control_image_each_with_their_own_scales() -> None:
    node = loaded(controlnets=[{"model": DEPTH_CN}, {"model": "diffusers/controlnet-canny-sdxl-1.0", "scale": 0.5}])
    assert node.controlnets[0] is node.controlnets[1]  # both resolve to the one tiny ControlNet: loaded once
    frames = [
        {"control_image": control(0), "control_image_2": control(1)},
        {"control_image": control(2), "control_image_2": control(3)},
    ]
    p = node.params
    batch = node.run_batch(frames, [p, p])
    alone = node.run_batch(frames[1:], [p])[0]["image"]
    assert differ(batch[1]["image"], alone) <= 2  # control images stay per frame in a batch
    quiet = node.run_batch(frames[:1], [p.model_copy(update={"controlnet_scales": (0.0, 0.0)})])[0]["image"]
    assert differ(quiet, batch[0]["image"]) > 0


def test_every_scheduler_runs(plain: Sdxl) -> None:
    for name in ["default", *SCHEDULERS]:
        image = plain.run_batch([{}], [plain.params.model_copy(update={"scheduler": name})])[0]["image"]
        assert image.shape == (64, 64, 3), name


def test_request_params_are_bounded_and_never_load_anything() -> None:
    assert {"model", "vae", "controlnets", "scheduler"}.isdisjoint(Sdxl.request_params)
    assert Sdxl.request_params <= set(SdxlParams.model_fields)
    for bad in (
        {"steps": 101},
        {"strength": 1.5},
        {"guidance": 31},
        {"width": 100},
        {"height": 4096},
        {"controlnet_scales": [0.5]},
        {"extra": 1},
    ):
        with pytest.raises(ValidationError):
            SdxlParams(**bad)
    assert SdxlParams(controlnets=[{"model": DEPTH_CN}], controlnet_scales=[0.3]).scales() == (0.3,)


def test_local_folders_load_without_the_tiny_switch(controlled: Sdxl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    base = tiny_model("sdxl", sdxl.tiny_base)
    net = tiny_model("sdxl-controlnet", sdxl.tiny_controlnet)
    assert (base / "model_index.json").exists() and (base / "unet" / "config.json").exists()
    node = Sdxl(SdxlParams(**FAST, model=str(base), controlnets=[{"model": str(net), "scale": 0.7}]), "gen")
    node.load("cpu", "float32")
    frame = {"control_image": control(5)}
    expected = controlled.run_batch([frame], [controlled.params])[0]["image"]
    assert differ(node.run_batch([frame], [node.params])[0]["image"], expected) <= 1


def test_a_missing_model_offline_names_the_node_and_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = tiny_model("sdxl", sdxl.tiny_base)
    missing = Sdxl(SdxlParams(model=str(base), controlnets=[{"model": "capgraph-tests/no-such-controlnet"}]), "painter")
    with pytest.raises(ModelMissing, match="node 'painter': model 'capgraph-tests/no-such-controlnet'"):
        missing.load("cpu", "float32")
    with pytest.raises(ModelMissing, match="node 'painter': model 'capgraph-tests/no-such-sdxl'"):
        Sdxl(SdxlParams(model="capgraph-tests/no-such-sdxl"), "painter").load("cpu", "float32")


@pytest.fixture
def tiny_frames() -> list[dict]:
    rng = np.random.default_rng(1)
    return [
        {"image": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "prompt": "a castle"},
        {"image": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "prompt": "a forest"},
    ]


def test_hybrid_graph_runs_end_to_end(tiny_models: Path, tiny_frames: list[dict]) -> None:
    executor = Executor(load_plan(GRAPHS / "hybrid.yaml"), device="cpu")
    result = executor.run(tiny_frames, params={"generate.steps": 2, "generate.seed": 3})
    assert list(executor.nodes) == ["fit", "depth", "control", "generate", "upscale"]
    for out in result.outputs:
        assert set(out) == {"image"} and out["image"].shape == (192, 256, 3) and out["image"].dtype == np.uint8
    default_prompt = executor.run([{"image": tiny_frames[0]["image"]}], params={"generate.steps": 2}).outputs[0][
        "image"
    ]
    assert default_prompt.shape == (192, 256, 3)
    with pytest.raises(InputError, match="fixed by the graph"):
        executor.run(tiny_frames[:1], params={"generate.model": "someone/else"})


def test_img2img_graph_redraws_the_frame_at_its_size(tiny_models: Path, tiny_frames: list[dict]) -> None:
    executor = Executor(load_plan(GRAPHS / "img2img.yaml"), device="cpu")
    result = executor.run(tiny_frames, params={"generate.steps": 2, "generate.strength": 0.5})
    for frame, out in zip(tiny_frames, result.outputs):
        assert out["image"].shape == frame["image"].shape and differ(out["image"], frame["image"]) > 0


def test_segment_repaint_graph_repaints_only_inside_the_mask(tiny_models: Path, tiny_frames: list[dict]) -> None:
    executor = Executor(load_plan(GRAPHS / "segment-repaint.yaml"), device="cpu")
    # the tiny SegFormer finds "person" pixels in these noise frames; no feathering keeps the test exact
    params = {"generate.steps": 2, "segment.classes": ["person"], "blend.feather": 0.0}
    out = executor.run(tiny_frames[:1], params=params).outputs[0]
    frame, mask = tiny_frames[0]["image"], out["mask"]
    assert out["image"].shape == frame.shape and 0 < mask.mean() < 1
    assert np.array_equal(out["image"][mask == 0], frame[mask == 0])
    assert (out["image"][mask == 1] != frame[mask == 1]).any()


def test_a_replacement_vae_loads_into_its_own_base(plain: Sdxl) -> None:
    node = loaded(vae="madebyollin/sdxl-vae-fp16-fix")
    assert node.base is not plain.base and node.base.unet is not plain.base.unet
    assert node.models() == ["stabilityai/stable-diffusion-xl-base-1.0", "madebyollin/sdxl-vae-fp16-fix"]
    assert node.run_batch([{}], [node.params])[0]["image"].shape == (64, 64, 3)


def test_fp16_modes_can_follow_one_another_on_the_shared_vae() -> None:
    """fp16 is what GPUs load; torch runs it on the CPU too, slowly, which is enough to check
    that an inpainting call (diffusers leaves the VAE upcast to fp32) does not break the next."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        node = Sdxl(SdxlParams(**FAST, controlnets=[{"model": DEPTH_CN}], strength=0.9), "gen16")
        node.load("cpu", "float16")
    frame = {"control_image": control(), "image": control(1), "mask": example_value(PortType.MASK, 64)}
    for wired in ({"control_image": control()}, frame, {"control_image": control()}):
        assert node.run_batch([wired], [node.params])[0]["image"].std() > 0
    assert node.base.unet.dtype == node.controlnets[0].dtype == node.base.vae.dtype == torch.float16
