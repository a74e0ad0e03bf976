"""The depth family as a user meets it: a tiny Depth Anything V2, saved like the hub repo and
loaded through the same from_pretrained path, gives a DepthMap (near = 1) and a preview."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from capgraph.engine.executor import Executor
from capgraph.engine.types import check_value
from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.engine.weights import ModelMissing, tiny_model
from capgraph.nodes.depth import MODEL, Depth, DepthParams, colorize

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


def frames() -> list[dict]:
    """Two frames of different shapes: Depth Anything keeps the aspect, so each is its own forward."""
    rng = np.random.default_rng(0)
    return [
        {"image": rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)},
        {"image": rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)},
    ]


@pytest.fixture(scope="module")
def node() -> Iterator[Depth]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        node = Depth(DepthParams(), "depth")
        node.load("cpu", "float32")
    yield node


def test_a_batch_gives_normalised_depth_and_a_preview_per_frame(node: Depth) -> None:
    params = DepthParams()
    out = node.run_batch(frames(), [params, params])
    assert len(out) == 2
    for frame, result in zip(frames(), out):
        assert set(result) == set(Depth.outputs)
        for name, value in result.items():
            assert check_value(Depth.outputs[name].type, value) is None, name
        depth = result["depth_map"]
        assert depth.shape == frame["image"].shape[:2] and depth.dtype == np.float32
        assert depth.min() == 0.0 and depth.max() == 1.0  # stretched per frame
        assert result["preview"].shape == frame["image"].shape
    assert node.weight_bytes > 0 and node.models() == [params.model]


def test_a_batch_equals_its_frames_one_by_one(node: Depth) -> None:
    params = DepthParams()
    same_size = [frames()[0], {"image": frames()[0]["image"][::-1].copy()}]
    batch = node.run_batch(same_size, [params, params])
    for frame, batched in zip(same_size, batch):
        single = node.run_batch([frame], [params])[0]
        np.testing.assert_allclose(batched["depth_map"], single["depth_map"], atol=1e-4)


def test_resolution_sets_the_side_the_model_sees(tiny_models: Path) -> None:
    sharp = Depth(DepthParams(resolution=224), "depth")
    sharp.load("cpu", "float32")
    seen: list[tuple[int, ...]] = []
    sharp.model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(tuple(kwargs["pixel_values"].shape)), with_kwargs=True
    )
    out = sharp.run_batch(frames(), [sharp.params] * 2)
    assert seen == [(1, 3, 168, 224), (1, 3, 224, 168)]  # aspect kept, long side 224 (the tiny's own is 112)
    assert [o["depth_map"].shape for o in out] == [(96, 128), (80, 60)]


def test_colormap_is_a_request_param_and_inferno_runs_dark_to_bright() -> None:
    assert Depth.request_params == {"colormap"} and "model" not in Depth.request_params
    ramp = np.linspace(0, 1, 9, dtype=np.float32)[None, :]
    inferno = colorize(ramp).astype(int)
    assert inferno[0, 0].tolist() == [0, 0, 4] and inferno[0, -1].tolist() == [252, 255, 164]
    assert np.all(np.diff(inferno[0].sum(axis=1)) > 0)  # brightness rises with nearness
    gray = colorize(ramp, "gray")
    assert np.array_equal(gray[..., 0], gray[..., 2]) and gray[0, -1, 0] == 255


def test_a_local_folder_loads_without_the_tiny_switch(node: Depth, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    folder = tiny_model("depth-anything", MODEL.tiny)
    assert (folder / "config.json").exists() and (folder / "preprocessor_config.json").exists()
    local = Depth(DepthParams(model=str(folder)), "depth")
    local.load("cpu", "float32")
    expected = node.run_batch(frames()[:1], [node.params])[0]["depth_map"]
    np.testing.assert_allclose(local.run_batch(frames()[:1], [local.params])[0]["depth_map"], expected, atol=1e-6)


def test_a_missing_model_offline_names_the_node_and_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = Depth(DepthParams(model="capgraph-tests/no-such-depth-model"), "near_far")
    with pytest.raises(ModelMissing, match="node 'near_far': model 'capgraph-tests/no-such-depth-model'"):
        missing.load("cpu", "float32")


def test_a_model_neither_cached_nor_reachable_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode with no route to the hub (a cluster machine started without
    HF_HUB_OFFLINE): the load fails at once naming the model and the fix, instead of
    from_pretrained retrying for minutes and Ray retrying the replica after it."""
    import socket
    import time

    from huggingface_hub import constants

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    missing = Depth(DepthParams(model="capgraph-tests/no-such-depth-model"), "near_far")
    started = time.monotonic()
    with pytest.raises(
        ModelMissing,
        match=r"node 'near_far': model 'capgraph-tests/no-such-depth-model' is not in the local "
        r"cache and the Hugging Face hub cannot be reached .*capgraph prepare",
    ):
        missing.load("cpu", "float32")
    assert time.monotonic() - started < 10


def test_depth_graph_runs_end_to_end(tiny_models: Path) -> None:
    executor = Executor(load_plan(GRAPHS / "depth.yaml"), device="cpu")
    result = executor.run(frames())
    assert executor.nodes["depth"].weight_bytes > 0
    for frame, out in zip(frames(), result.outputs):
        assert (
            out["depth_map"].shape == frame["image"].shape[:2]
            and 0.0 <= out["depth_map"].min() <= out["depth_map"].max() <= 1.0
        )
        assert out["preview"].dtype == np.uint8
    gray = executor.run(frames()[:1], params={"depth.colormap": "gray"}).outputs[0]["preview"]
    assert np.array_equal(gray[..., 0], gray[..., 1])


def test_an_unread_preview_is_not_computed_and_a_read_one_is(tiny_models: Path) -> None:
    """A graph that wires only the depth map never pays for the colour preview; one that
    asks for the preview gets it, as before."""
    graph = {
        "capability": "depth-only",
        "inputs": {"image": {"type": "image"}},
        "nodes": {"depth": {"type": "depth", "inputs": {"image": "image"}}},
        "outputs": {"depth_map": "depth.depth_map"},
    }
    map_only = Executor(plan_from_data(graph), device="cpu")
    assert map_only.run(frames()).outputs[0].keys() == {"depth_map"}
    node = map_only.nodes["depth"]
    assert node.wanted == {"depth_map"}
    assert node.run_batch(frames()[:1], [node.params])[0].keys() == {"depth_map"}

    both = Executor(
        plan_from_data(graph | {"outputs": {"depth_map": "depth.depth_map", "preview": "depth.preview"}}), device="cpu"
    )
    out = both.run(frames()).outputs[0]
    assert both.nodes["depth"].wanted == {"depth_map", "preview"} and out["preview"].dtype == np.uint8
