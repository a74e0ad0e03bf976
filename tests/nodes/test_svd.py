"""The image-to-video family as a user meets it: a tiny Stable Video Diffusion saved like the hub
repo and loaded back with from_pretrained animates a frame into a clip on the CPU; its params
are bounded; `capgraph prepare` fetches only what the pipeline loads; the shipped graph runs
with one command and writes an MP4 that PyAV reads back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from capgraph.engine.types import PortType, check_value
from capgraph.engine.validate import load_plan
from capgraph.engine.video import decode_video
from capgraph.engine.weights import tiny_model
from capgraph.nodes.prepare import wanted_files
from capgraph.nodes.svd import WEIGHTS, Svd, SvdParams

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "image-to-video.yaml"
SVD_XT = [  # the files of stabilityai/stable-video-diffusion-img2vid-xt
    ".gitattributes",
    "LICENSE.md",
    "README.md",
    "model_index.json",
    "svd_xt.safetensors",
    "svd_xt_image_decoder.safetensors",
    "feature_extractor/preprocessor_config.json",
    "image_encoder/config.json",
    "image_encoder/model.fp16.safetensors",
    "image_encoder/model.safetensors",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]
SVD_COMPONENTS = ["feature_extractor", "image_encoder", "scheduler", "unet", "vae"]


@pytest.fixture(scope="module")
def svd() -> Svd:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        node = Svd(SvdParams(frames=4, steps=1, decode_chunk_size=2), "video")
        node.load("cpu", "float32")
    return node


def image(seed: int = 0, height: int = 64, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_a_frame_becomes_a_clip_of_the_asked_frames_size_and_rate(svd: Svd) -> None:
    (out,) = svd.run_batch([{"image": image()}], [svd.params.model_copy(update={"fps": 9, "width": 64})])
    clip = out["video"]
    assert check_value(PortType.VIDEO, clip) is None
    assert clip.frames.shape == (4, 64, 64, 3) and clip.fps == 9.0 and clip.frames.std() > 0
    assert svd.weight_bytes > 0 and svd.models() == [WEIGHTS.default]


def test_the_seed_decides_the_clip(svd: Svd) -> None:
    frame = {"image": image(1, 48, 64)}  # unset width and height: the image's
    a, b = svd.run_batch([frame, frame], [svd.params, svd.params])
    (c,) = svd.run_batch([frame], [svd.params.model_copy(update={"seed": 7})])
    assert a["video"].frames.shape == (4, 48, 64, 3)
    assert np.array_equal(a["video"].frames, b["video"].frames)
    assert not np.array_equal(a["video"].frames, c["video"].frames)


def test_the_tiny_model_is_the_hub_layout_loaded_through_from_pretrained() -> None:
    folder = tiny_model(WEIGHTS.key, WEIGHTS.tiny)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableVideoDiffusionPipeline"
    assert {k for k in index if not k.startswith("_")} == set(SVD_COMPONENTS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("frames", 1),
        ("frames", 51),
        ("fps", 0),
        ("motion_bucket_id", -1),
        ("noise_aug_strength", 1.5),
        ("steps", 0),
        ("decode_chunk_size", 0),
        ("width", 100),
        ("seed", -1),
    ],
)
def test_params_are_bounded(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        SvdParams(**{field: value})


def test_prepare_fetches_only_the_pipeline_folders_in_the_wanted_precision() -> None:
    fp16 = wanted_files(SVD_XT, "fp16", SVD_COMPONENTS)
    assert "svd_xt.safetensors" not in fp16 and "svd_xt_image_decoder.safetensors" not in fp16
    assert [f for f in fp16 if f.endswith(".safetensors")] == [
        "image_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert "model_index.json" in fp16 and "feature_extractor/preprocessor_config.json" in fp16


def test_the_shipped_graph_runs_in_one_command_and_writes_an_mp4(tmp_path: Path) -> None:
    plan = load_plan(GRAPH)
    assert plan.nodes["upscale"].clip == {"image"} and plan.output_type("video") is PortType.VIDEO
    done = subprocess.run(
        [sys.executable, "-m", "capgraph", "run", str(GRAPH), "-i", f"image={ROOT / 'examples' / 'sample.png'}"]
        + ["-s", "fit.width=64", "-s", "fit.height=64", "-s", "video.frames=5", "-s", "video.fps=8"]
        + ["-s", "video.steps=1", "-o", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"CAPGRAPH_MODELS": "tiny"},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    clip = decode_video(Path(report["outputs"]["video"]).read_bytes())
    assert clip.frames.shape == (5, 256, 256, 3) and clip.fps == 8.0  # ESRGAN x4 over every frame
    assert report["timings_ms"]["upscale.batch"] == 5  # the 5 frames in one call (batch.max_size 8)


def test_progress_counts_the_denoising_steps_while_a_clip_runs(svd: Svd) -> None:
    seen = []
    forward = svd.pipe.unet.forward

    def watched(*args, **kwargs):
        seen.append(svd.progress)
        return forward(*args, **kwargs)

    svd.pipe.unet.forward = watched
    try:
        svd.run_batch([{"image": image()}], [svd.params.model_copy(update={"steps": 3, "frames": 2})])
    finally:
        svd.pipe.unet.forward = forward
    assert seen == [(0, 3), (1, 3), (2, 3)] and svd.progress is None
