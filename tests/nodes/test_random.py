"""CAPGRAPH_MODELS=random: full-size architectures with random fp16 weights, checked on the
CPU without allocating them. Parameter counts are taken on the meta device against the
published figures; the folder layout is checked by writing deliberately shrunk variants
through the very writers random mode uses and comparing them with the tiny models; the
small vision models and ESRGAN are written at full size and run through their nodes."""

import copy
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from capgraph.engine.registry import catalogue
from capgraph.engine.weights import Weights, random_model, random_root, resolve, tiny_model, write_random_models
from capgraph.nodes import sam2, svd
from capgraph.nodes.depth import MODEL as DEPTH_MODEL
from capgraph.nodes.depth import Depth, DepthParams
from capgraph.nodes.segmentation import Segmentation, SegmentationParams
from capgraph.nodes.upscale import Upscale, UpscaleParams

MILLION = 1e6
FULL_SIZE = {
    key: build
    for family in catalogue().values()
    if family.__module__.startswith("capgraph.")
    for key, build in family.random_models().items()
}
"""The built-in families' full-size random builders by key: each holds its config and module builder."""
CONFIGS = {key: build.config for key, build in FULL_SIZE.items()}
MODELS = {key: build.modules for key, build in FULL_SIZE.items()}
PUBLISHED = {  # millions of parameters, as published for each default repo (its model card or paper)
    ("depth-anything", "model"): 24.8,
    ("segformer", "model"): 3.75,
    ("sam2", "model"): 224.4,  # the video checkpoint; its image model is checked below
    ("sdxl", "unet"): 2567.0,
    ("sdxl", "vae"): 83.65,
    ("sdxl", "text_encoder"): 123.0,
    ("sdxl", "text_encoder_2"): 695.0,
    ("sdxl-vae", "vae"): 83.65,
    ("sdxl-controlnet", "controlnet"): 1250.0,
    ("sd-x4-upscaler", "unet"): 473.4,
    ("sd-x4-upscaler", "vae"): 55.3,
    ("sd-x4-upscaler", "text_encoder"): 340.4,
    ("esrgan-x4", "model"): 16.7,  # Real-ESRGAN x4plus, 23 RRDB blocks
    ("safety-checker", "model"): 304.0,  # 1.22 GB of fp32 weights: CLIP ViT-L/14's vision tower and projection
    ("svd-xt", "unet"): 1524.6,  # stable-video-diffusion-img2vid-xt: 1.52 B
    ("svd-xt", "vae"): 97.7,  # the temporal-decoder VAE
    ("svd-xt", "image_encoder"): 632.1,  # OpenCLIP ViT-H/14's vision tower and projection
}


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / MILLION


def on_meta(build: Any, config: Any) -> dict[str, torch.nn.Module]:
    with torch.device("meta"):
        return build(copy.deepcopy(config))


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_full_size_architectures_have_the_published_parameter_counts(key: str) -> None:
    modules = on_meta(MODELS[key], CONFIGS[key])
    counts = {name: millions(module) for name, module in modules.items()}
    expected = {name: count for (k, name), count in PUBLISHED.items() if k == key}
    assert counts.keys() == expected.keys()
    for name, count in counts.items():
        assert count == pytest.approx(expected[name], rel=0.01), f"{key}/{name}: {count:.2f} M"


def test_sam2_image_model_is_hiera_large() -> None:
    (image_model,) = on_meta(sam2.image_modules, sam2.CONFIG).values()
    assert millions(image_model) == pytest.approx(216.9, rel=0.01)


def test_every_tiny_model_has_a_random_one_under_the_same_key() -> None:
    for family in catalogue().values():
        assert family.random_models().keys() == family.tiny_models().keys(), family.type
    builtin = [f for f in catalogue().values() if f.__module__.startswith("capgraph.")]  # a plug-in brings its own
    declared = {key for family in builtin for key in family.random_models()}
    assert declared == set(CONFIGS) == set(MODELS)


# Shrunk variants of the real configs: every other hyperparameter stays the published one.

TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32)
SD_UNET = dict(
    block_out_channels=[32, 64],
    layers_per_block=1,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 1],
    attention_head_dim=[2, 4],
    cross_attention_dim=64,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,
)
SD_VAE = dict(
    block_out_channels=[32, 64],
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    layers_per_block=1,
)
SHRINK: dict[str, dict[str, dict[str, Any]]] = {
    "depth-anything": {
        "backbone": dict(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=112, out_indices=[1, 2, 3, 4]
        ),
        "model": dict(
            reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8
        ),
    },
    "segformer": {
        "model": dict(
            hidden_sizes=[8, 16, 32, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16
        )
    },
    "sam2": {
        "backbone": dict(
            hidden_size=8,
            num_attention_heads=1,
            image_size=[64, 64],
            blocks_per_stage=[1, 1, 2, 1],
            embed_dim_per_stage=[8, 16, 32, 64],
            num_attention_heads_per_stage=[1, 1, 1, 1],
            window_size_per_stage=[4, 4, 4, 4],
            global_attention_blocks=[3],
            window_positional_embedding_background_size=[2, 2],
        ),
        "vision": dict(backbone_channel_list=[64, 32, 16, 8], backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]]),
        "model": dict(image_size=64),
    },
    "sdxl": {"unet": SD_UNET, "vae": SD_VAE, "text_encoder": TEXT, "text_encoder_2": TEXT},
    "sdxl-vae": {"vae": SD_VAE},
    "sdxl-controlnet": {
        "controlnet": {
            **{k: v for k, v in SD_UNET.items() if k != "up_block_types"},
            "conditioning_embedding_out_channels": [16, 32],
        }
    },
    "sd-x4-upscaler": {
        "unet": dict(
            block_out_channels=[32, 32, 64],
            layers_per_block=1,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            only_cross_attention=[True, True, False],
            cross_attention_dim=32,
        ),
        "vae": {
            **SD_VAE,
            "block_out_channels": [32, 32, 64],
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
        },
        "text_encoder": TEXT,
    },
    "esrgan-x4": {"model": dict(num_filters=8, num_blocks=1)},
    "svd-xt": {section: dict(svd.TINY_CONFIG[section]) for section in ("unet", "vae", "image_encoder")},
    "safety-checker": {
        "vision": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
        | dict(image_size=32, patch_size=8),
        "text": TEXT,
        "model": dict(projection_dim=32),
    },
}


def shrunk(key: str) -> dict[str, dict[str, Any]]:
    config = copy.deepcopy(CONFIGS[key])
    for section, overrides in SHRINK[key].items():
        config[section].update(overrides)
    return config


def builder(key: str) -> Any:
    (build,) = (b for family in catalogue().values() for k, b in family.random_models().items() if k == key)
    return build


@pytest.fixture(scope="module")
def shrunk_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CAPGRAPH_RANDOM_DIR holding a shrunk random model per key, written by the random writers."""
    base = tmp_path_factory.mktemp("random")
    for key in CONFIGS:
        random_model(key, partial(builder(key), config=shrunk(key), device="cpu"), root=random_root(base))
    return base


IDENTITY = (
    "_class_name",
    "architectures",
    "model_type",
    "image_processor_type",
    "processor_class",
    "video_processor_type",
)


def layout(folder: Path) -> dict[str, Any]:
    """Files of a model folder, with the class names their JSON files declare (model_index.json whole)."""
    found: dict[str, Any] = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".complete"):
        name = str(file.relative_to(folder))
        if file.suffix == ".json":
            data = json.loads(file.read_text())
            keep = data.keys() - {"_diffusers_version"} if file.name == "model_index.json" else set(IDENTITY)
            found[name] = {k: data[k] for k in sorted(keep) if k in data}
        else:
            found[name] = None
    return found


def tensors(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".pth":
        return torch.load(file, map_location="cpu")
    from safetensors.torch import load_file

    return load_file(file)


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_random_folders_have_the_tiny_layout_and_fp16_weights(key: str, shrunk_root: Path) -> None:
    random_folder = random_root(shrunk_root) / key
    tiny_folder = tiny_model(key, next(f.tiny_models()[key] for f in catalogue().values() if key in f.tiny_models()))
    assert layout(random_folder) == layout(tiny_folder)
    weights = [p for p in random_folder.rglob("*") if p.suffix in (".safetensors", ".pth")]
    assert weights
    for file in weights:
        values = tensors(file)
        if file.suffix == ".pth":  # spandrel reads the architecture from these names
            assert values.keys() == tensors(tiny_folder / file.relative_to(random_folder)).keys()
        floats = [t for t in values.values() if t.is_floating_point()]
        assert floats and all(t.dtype == torch.float16 and torch.isfinite(t).all() for t in floats), file


def test_random_mode_loads_and_runs_shrunk_sdxl_and_sam2_through_the_nodes(
    shrunk_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capgraph.nodes.sam2 import Sam2, Sam2Params
    from capgraph.nodes.sdxl import Sdxl, SdxlParams

    monkeypatch.setenv("CAPGRAPH_MODELS", "random")
    monkeypatch.setenv("CAPGRAPH_RANDOM_DIR", str(shrunk_root))
    generate = Sdxl(
        SdxlParams(steps=1, width=64, height=64, controlnets=[{"model": "diffusers/controlnet-depth-sdxl-1.0"}]), "gen"
    )
    generate.load("cpu", "float32")
    image = generate.run_batch([generate.example_inputs()], [generate.params])[0]["image"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    segment = Sam2(Sam2Params(point_coords=[[32, 32]]), "sam")
    segment.load("cpu", "float32")
    masks = segment.run_batch([{"image": np.zeros((48, 64, 3), np.uint8)}], [segment.params])[0]["masks"]
    assert masks["masks"].shape[1:] == (48, 64)


def test_resolve_in_random_mode_uses_the_random_folder_whatever_the_model(
    shrunk_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tiny(folder: Path) -> None:
        raise AssertionError("random mode must not build the tiny model")

    monkeypatch.setenv("CAPGRAPH_MODELS", "random")
    monkeypatch.setenv("CAPGRAPH_RANDOM_DIR", str(shrunk_root))
    depth = Weights("depth-anything", None, no_tiny, DEPTH_MODEL.random)
    assert resolve("Intel/dpt-large", "depth", depth) == str(shrunk_root / "v1" / "depth-anything")
    with pytest.raises(KeyError, match="no node family declares a full-size random model 'nope'"):
        resolve("x", "n", Weights("nope", None, no_tiny))


def test_random_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CAPGRAPH_RANDOM_DIR", raising=False)
    assert random_root() == Path.home() / ".cache" / "capgraph" / "random" / "v1"
    monkeypatch.setenv("CAPGRAPH_RANDOM_DIR", str(tmp_path))
    assert random_root() == tmp_path / "v1"
    assert random_root(tmp_path / "elsewhere") == tmp_path / "elsewhere" / "v1"


def test_write_random_models_refuses_unknown_keys_and_keeps_what_is_there(shrunk_root: Path) -> None:
    with pytest.raises(KeyError, match="no random model for \\['nope'\\]"):
        write_random_models(shrunk_root, catalogue().values(), ["nope"])
    before = (shrunk_root / "v1" / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    written = write_random_models(shrunk_root, catalogue().values(), ["sdxl"])
    assert written == {"sdxl": str(shrunk_root / "v1" / "sdxl")}
    assert (shrunk_root / "v1" / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before


@pytest.fixture(scope="module")
def full_size_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three small full-size models (98 MB of fp16 weights), written as `capgraph random-models` does."""
    base = tmp_path_factory.mktemp("random-full")
    written = write_random_models(base, catalogue().values(), ["depth-anything", "segformer", "esrgan-x4"])
    assert set(written) == {"depth-anything", "segformer", "esrgan-x4"}
    return base


def test_full_size_vision_models_and_esrgan_load_and_run_in_random_mode(
    full_size_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPGRAPH_MODELS", "random")
    monkeypatch.setenv("CAPGRAPH_RANDOM_DIR", str(full_size_root))
    frame = {"image": np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)}
    depth = Depth(DepthParams(resolution=112), "depth")
    depth.load("cpu", "float32")
    assert depth.weight_bytes == pytest.approx(4 * 24.8 * MILLION, rel=0.01)
    assert depth.run_batch([frame], [depth.params])[0]["depth_map"].shape == (24, 32)
    segment = Segmentation(SegmentationParams(classes=["person", "flag"]), "seg")
    segment.load("cpu", "float32")
    assert segment.model.config.num_labels == 150
    assert segment.run_batch([frame], [segment.params])[0]["labels"].shape == (24, 32)
    upscale = Upscale(UpscaleParams(method="esrgan"), "up")
    upscale.load("cpu", "float32")
    assert upscale.weight_bytes == pytest.approx(4 * 16.7 * MILLION, rel=0.01)
    small = {"image": frame["image"][:8, :8]}
    assert upscale.run_batch([small], [upscale.params])[0]["image"].shape == (32, 32, 3)
