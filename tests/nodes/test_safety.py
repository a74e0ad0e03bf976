"""The safety family as a user meets it: a tiny StableDiffusionSafetyChecker, saved like
CompVis/stable-diffusion-safety-checker and loaded through the same from_pretrained path,
flags the one frame its concept embeddings were built from (a magenta frame) and no other,
and blacks a flagged frame out when the graph asks."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from capgraph.engine.executor import Executor
from capgraph.engine.node import example_value
from capgraph.engine.types import PortType, check_value
from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.nodes.prepare import wanted_files
from capgraph.nodes.safety import FLAGGED_COLOUR, MODEL, Safety, SafetyParams

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
FLAGGED = np.full((96, 128, 3), FLAGGED_COLOUR, np.uint8)
CLEAN = [
    example_value(PortType.IMAGE),
    np.random.default_rng(0).integers(0, 255, (80, 60, 3), dtype=np.uint8),
    np.full((64, 64, 3), (255, 0, 0), np.uint8),
]


@pytest.fixture(scope="module")
def node() -> Iterator[Safety]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        node = Safety(SafetyParams(black_out=True), "safety")
        node.load("cpu", "float32")
    yield node


def test_the_tiny_checker_flags_its_magenta_frame_and_nothing_else(node: Safety) -> None:
    frames = [{"image": image} for image in (FLAGGED, *CLEAN)]
    out = node.run_batch(frames, [node.params] * len(frames))
    assert [result["nsfw"] for result in out] == [True, False, False, False]
    for result in out:
        assert set(result) == set(Safety.outputs)
        for name, value in result.items():
            assert check_value(Safety.outputs[name].type, value) is None, name
    assert node.weight_bytes > 0 and node.models() == [MODEL.default]


def test_black_out_blacks_a_flagged_frame_only_when_asked(node: Safety) -> None:
    keep = SafetyParams(black_out=False)
    blacked, clean, kept = node.run_batch(
        [{"image": FLAGGED}, {"image": CLEAN[0]}, {"image": FLAGGED}], [node.params, node.params, keep]
    )
    assert blacked["nsfw"] and blacked["image"].shape == FLAGGED.shape and blacked["image"].dtype == np.uint8
    assert not blacked["image"].any()
    assert clean["image"] is CLEAN[0]  # an unflagged frame passes untouched
    assert kept["nsfw"] and np.array_equal(kept["image"], FLAGGED)


def test_a_batch_equals_its_frames_one_by_one(node: Safety) -> None:
    frames = [{"image": image} for image in (FLAGGED, CLEAN[0], CLEAN[2])]
    batch = node.run_batch(frames, [node.params] * 3)
    singles = [node.run_batch([frame], [node.params])[0] for frame in frames]
    assert [b["nsfw"] for b in batch] == [s["nsfw"] for s in singles]


def test_only_the_verdict_is_computed_when_nothing_reads_the_image(node: Safety) -> None:
    node.wanted = frozenset({"nsfw"})
    try:
        assert node.run_batch([{"image": FLAGGED}], [node.params]) == [{"nsfw": True}]
    finally:
        node.wanted = frozenset(Safety.outputs)


def test_black_out_is_the_graph_s_policy_not_the_request_s() -> None:
    assert "black_out" not in Safety.request_params and Safety.request_params == frozenset()


def test_prepare_fetches_the_config_the_preprocessor_and_one_weight_file() -> None:
    repo = [  # CompVis/stable-diffusion-safety-checker as the hub lists it
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "pytorch_model.bin",
    ]
    expected = ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert wanted_files(repo, "fp16") == wanted_files(repo, "fp32") == expected


def test_the_shipped_graph_runs_the_checker_after_sdxl_on_tiny_models(tiny_models: Path) -> None:
    plan = load_plan(GRAPHS / "txt2img.yaml")
    assert plan.nodes["safety"].inputs["image"].node == "generate"
    assert plan.output_type("nsfw") is PortType.BOOL
    params = {"generate.steps": 1, "generate.width": 64, "generate.height": 64}
    result = Executor(plan, device="cpu").run([{"prompt": "a red cube"}], params)
    (out,) = result.outputs
    assert out["nsfw"] is False and out["image"].shape == (64, 64, 3)
    assert {"generate", "safety"} <= set(result.timings_ms)  # the checker's cost shows under its node


def test_a_graph_can_check_a_frame_it_is_given(tiny_models: Path) -> None:
    graph = {
        "capability": "check",
        "inputs": {"image": "image"},
        "nodes": {"safety": {"type": "safety", "params": {"black_out": True}, "inputs": {"image": "image"}}},
        "outputs": {"nsfw": "safety.nsfw", "image": "safety.image"},
    }
    outputs = Executor(plan_from_data(graph), device="cpu").run([{"image": FLAGGED}, {"image": CLEAN[1]}]).outputs
    assert [o["nsfw"] for o in outputs] == [True, False]
    assert not outputs[0]["image"].any() and np.array_equal(outputs[1]["image"], CLEAN[1])
