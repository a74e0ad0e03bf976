"""The sam2 family as a user meets it: a tiny SAM 2, saved like `facebook/sam2-hiera-large`
(a sam2_video checkpoint with its processor) and loaded through from_pretrained, answers point
and box prompts from params or from other nodes with Livepeer's masks, scores and logits."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from capgraph.engine.errors import InputError
from capgraph.engine.executor import Executor
from capgraph.engine.types import PortType, check_value
from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.engine.weights import ModelMissing, tiny_model
from capgraph.nodes import sam2
from capgraph.nodes.sam2 import Sam2, Sam2Params

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
LOW_RES = sam2.TINY_SIZE // 4
"""Side of the tiny model's mask logits (256 for the real ones)."""


def image(seed: int = 0, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size + (3,), dtype=np.uint8)


@pytest.fixture(scope="module")
def node() -> Iterator[Sam2]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        node = Sam2(Sam2Params(), "sam")
        node.load("cpu", "float32")
    yield node


def run(node: Sam2, frame: dict, **params: object) -> dict:
    return node.run_batch([frame], [Sam2Params(**params)])[0]


def assert_close(a: dict, b: dict) -> None:
    """Same answer up to float noise. A random tiny SAM 2 has logits near 1e-4 and scores
    within 1e-3 of 0.5 whatever the prompt, so the tolerances are far below those spreads."""
    np.testing.assert_allclose(a["masks"]["scores"], b["masks"]["scores"], rtol=0, atol=1e-6)
    scale = float(np.abs(b["masks"]["logits"]).max())
    np.testing.assert_allclose(a["masks"]["logits"], b["masks"]["logits"], rtol=0, atol=1e-4 * scale)
    assert np.mean(a["masks"]["masks"] != b["masks"]["masks"]) < 0.001  # a logit at 0 may flip a pixel, no more


def test_a_point_gives_three_candidates_best_first_like_livepeer(node: Sam2) -> None:
    params = Sam2Params(point_coords=[[40, 30]], point_labels=[1])
    frames = [{"image": image(0)}, {"image": image(1, (80, 60))}]
    out = node.run_batch(frames, [params, params])
    for frame, result in zip(frames, out):
        assert set(result) == set(Sam2.outputs)
        for name, value in result.items():
            assert check_value(Sam2.outputs[name].type, value) is None, name
        masks, height_width = result["masks"], frame["image"].shape[:2]
        assert masks["masks"].shape == (3, *height_width) and masks["masks"].dtype == np.float32
        assert set(np.unique(masks["masks"])) <= {0.0, 1.0}
        assert masks["scores"].shape == (3,) and np.all(np.diff(masks["scores"]) <= 0)
        assert masks["logits"].shape == (3, LOW_RES, LOW_RES) and masks["logits"].dtype == np.float32
        assert np.array_equal(result["mask"], masks["masks"][0])
    assert node.weight_bytes > 0 and node.models() == ["facebook/sam2-hiera-large"]
    single = run(node, {"image": image(0)}, multimask_output=False, point_coords=[[40, 30]])
    assert single["masks"]["masks"].shape == (1, 96, 128)


def test_a_batch_of_mixed_prompts_equals_its_frames_one_by_one(node: Sam2) -> None:
    frames = [
        {"image": image(0), "points": [[40, 30, 1], [100, 80, 0]]},
        {"image": image(1), "boxes": [[0, 0, 60, 50], [50, 40, 128, 96]]},
        {"image": image(2), "points": [[10, 10, 1], [20, 20, 1]]},
    ]
    params = Sam2Params()
    batch = node.run_batch(frames, [params] * 3)
    for frame, batched in zip(frames, batch):
        assert_close(batched, node.run_batch([frame], [params])[0])
    assert batch[1]["masks"]["masks"].shape == (2, 96, 128)  # one best mask per box
    assert np.array_equal(batch[1]["mask"], batch[1]["masks"]["masks"].max(axis=0))


def test_ports_with_prompts_win_over_params(node: Sam2) -> None:
    frame = {"image": image(0)}
    by_params = run(node, frame, point_coords=[[40, 30], [100, 80]], point_labels=[1, 0])
    by_port = run(node, {**frame, "points": [[40, 30, 1], [100, 80, 0]]}, point_coords=[[5, 5]])
    assert_close(by_port, by_params)
    empty_port = run(
        node, {**frame, "points": [], "boxes": []}, point_coords=[[40, 30], [100, 80]], point_labels=[1, 0]
    )
    assert_close(empty_port, by_params)  # an empty port leaves the params in charge
    with pytest.raises(AssertionError):
        assert_close(run(node, frame, point_coords=[[5, 5]]), by_params)  # the prompt does change the answer


def test_a_mask_input_prompts_with_its_bounding_box(node: Sam2) -> None:
    rough = np.zeros((96, 128), np.float32)
    rough[20:50, 30:90] = 1.0
    by_mask = run(node, {"image": image(0), "mask": rough})
    by_box = run(node, {"image": image(0)}, box=[30, 20, 90, 50])
    assert_close(by_mask, by_box)
    half_size = run(node, {"image": image(0), "mask": rough[::2, ::2].copy()})
    assert_close(half_size, by_box)  # a mask at another size still boxes the same frame pixels
    nothing = run(node, {"image": image(0), "mask": np.zeros((96, 128), np.float32)})
    assert nothing["masks"]["masks"].shape == (3, 96, 128)  # no prompt at all still answers


def test_points_with_several_boxes_is_a_request_error(node: Sam2) -> None:
    frame = {"image": image(0), "boxes": [[0, 0, 10, 10], [5, 5, 20, 20]]}
    with pytest.raises(InputError, match="points can go with one box only, got 2 boxes"):
        run(node, frame, point_coords=[[4, 4]])


def test_params_are_checked_before_anything_loads() -> None:
    with pytest.raises(ValidationError, match="2 labels for 1 point_coords"):
        Sam2Params(point_coords=[[1, 2]], point_labels=[1, 0])
    with pytest.raises(ValidationError, match="x0 <= x1"):
        Sam2Params(box=[50, 0, 10, 10])
    with pytest.raises(ValidationError, match="0 \\(background\\) or 1"):
        Sam2Params(point_coords=[[1, 2]], point_labels=[2])
    with pytest.raises(ValidationError):
        Sam2Params(point_coords=[[1, 2, 3]])
    assert Sam2.request_params == {"point_coords", "point_labels", "box", "multimask_output"}
    assert {name for name, p in Sam2.inputs.items() if p.optional} == {"points", "boxes", "mask"}
    assert Sam2.outputs["masks"].type is PortType.MASKS


def test_a_weights_only_hf_folder_loads_with_sams_default_processor(
    node: Sam2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `facebook/sam2-hiera-*-hf` repos hold a sam2 config and weights, no processor file."""
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    node.model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    hf = Sam2(Sam2Params(model=str(tmp_path)), "sam")
    hf.load("cpu", "float32")
    frame = {"image": image(0), "points": [[40, 30, 1]]}
    assert_close(run(hf, frame), run(node, frame))


def test_a_local_folder_loads_without_the_tiny_switch(node: Sam2, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    folder = tiny_model("sam2", sam2.MODEL.tiny)
    local = Sam2(Sam2Params(model=str(folder)), "sam")
    local.load("cpu", "float32")
    frame = {"image": image(0), "boxes": [[10, 10, 90, 70]]}
    assert_close(run(local, frame), run(node, frame))


def test_a_missing_model_offline_names_the_node_and_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = Sam2(Sam2Params(model="capgraph-tests/no-such-sam2"), "cutout")
    with pytest.raises(ModelMissing, match="node 'cutout': model 'capgraph-tests/no-such-sam2'"):
        missing.load("cpu", "float32")


def test_segment_graph_runs_end_to_end(node: Sam2, tiny_models: Path) -> None:
    executor = Executor(load_plan(GRAPHS / "segment.yaml"), device="cpu")
    result = executor.run(
        [{"image": image(0), "points": [[40, 30, 1]]}, {"image": image(1), "boxes": [[10, 10, 90, 70]]}]
    )
    first, second = result.outputs
    assert first["masks"]["masks"].shape == (3, 96, 128) and first["mask"].shape == (96, 128)
    assert_close(first, run(node, {"image": image(0)}, point_coords=[[40, 30]]))
    assert_close(second, run(node, {"image": image(1)}, box=[10, 10, 90, 70]))
    by_request = executor.run(
        [{"image": image(0)}], params={"sam.point_coords": [[40, 30]], "sam.multimask_output": False}
    )
    assert by_request.outputs[0]["masks"]["masks"].shape == (1, 96, 128)


def test_without_a_reader_for_masks_only_the_best_mask_is_computed(node: Sam2, tiny_models: Path) -> None:
    """A graph that reads only `mask` gets the same best mask, without the candidates and
    their logits being copied off the device."""
    full = run(node, {"image": image(0)}, point_coords=[[40, 30]])
    graph = {
        "capability": "cutout",
        "inputs": {"image": {"type": "image"}},
        "nodes": {"sam": {"type": "sam2", "params": {"point_coords": [[40, 30]]}, "inputs": {"image": "image"}}},
        "outputs": {"mask": "sam.mask"},
    }
    executor = Executor(plan_from_data(graph), device="cpu")
    out = executor.run([{"image": image(0)}]).outputs[0]
    assert executor.nodes["sam"].wanted == {"mask"}
    assert executor.nodes["sam"].run_batch([{"image": image(0)}], [executor.plan.nodes["sam"].params])[0].keys() == {
        "mask"
    }
    assert np.mean(out["mask"] != full["mask"]) < 0.001
