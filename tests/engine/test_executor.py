"""Running a graph in one process: inputs checked, params per request, batches of frames."""

from pathlib import Path

import numpy as np
import pytest

from capgraph.engine.errors import InputError, NodeFailed
from capgraph.engine.executor import Executor, check_inputs
from capgraph.engine.validate import load_plan, plan_from_data

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


@pytest.fixture(scope="module")
def edges() -> Executor:
    executor = Executor(load_plan(GRAPHS / "edges.yaml"))
    executor.load()
    return executor


def frame(seed: int = 0, size: tuple[int, int] = (100, 150)) -> dict:
    rng = np.random.default_rng(seed)
    image = np.zeros(size + (3,), np.uint8)
    image[20:80, 30:120] = rng.integers(100, 255, 3, dtype=np.uint8)
    return {"image": image}


def test_run_gives_every_output_with_declared_types_and_timings(edges: Executor) -> None:
    result = edges.run([frame()])
    out = result.outputs[0]
    assert out["image"].shape == (96, 144, 3)  # cropped to multiples of 8
    assert out["edges"].shape == (96, 144, 3) and out["edges"].dtype == np.uint8
    assert out["edges"].max() == 255  # the rectangle has edges
    assert set(result.timings_ms) == {"fit", "edges"}


def test_a_batch_equals_its_frames_run_one_by_one(edges: Executor) -> None:
    frames = [frame(1), frame(2, (64, 64))]
    batch = edges.run(frames).outputs
    single = [edges.run([f]).outputs[0] for f in frames]
    for a, b in zip(batch, single):
        assert np.array_equal(a["edges"], b["edges"])


def test_request_params_override_only_what_the_graph_allows(edges: Executor) -> None:
    quiet = edges.run([frame()], {"edges.low_threshold": 250, "edges.high_threshold": 255}).outputs[0]
    assert quiet["edges"].sum() <= edges.run([frame()]).outputs[0]["edges"].sum()
    with pytest.raises(InputError) as caught:
        edges.run([frame()], {"edges.detect_resolution": 64})
    assert caught.value.field == "params.edges.detect_resolution" and "fixed by the graph" in caught.value.message
    with pytest.raises(InputError) as caught:
        edges.run([frame()], {"edges.low_treshold": 1})
    assert "Did you mean 'edges.low_threshold'" in caught.value.message
    with pytest.raises(InputError) as caught:
        edges.run([frame()], {"edges.low_threshold": 300})
    assert caught.value.field == "params.edges.low_threshold"


def test_missing_or_mistyped_inputs_name_the_field(edges: Executor) -> None:
    with pytest.raises(InputError, match="required input") as caught:
        check_inputs(edges.plan, {})
    assert caught.value.field == "inputs.image"
    with pytest.raises(InputError, match="uint8") as caught:
        check_inputs(edges.plan, {"image": np.zeros((4, 4), np.float32)})
    with pytest.raises(InputError, match="no input 'imgae'"):
        check_inputs(edges.plan, {"imgae": 1})


def test_defaults_fill_optional_inputs_and_numbers_widen() -> None:
    plan = plan_from_data(
        {
            "capability": "defaults",
            "inputs": {"image": "image", "low": {"type": "number", "default": 3}},
            "nodes": {"fit": {"type": "resize", "inputs": {"image": "image"}}},
            "outputs": {"image": "fit.image", "low": "low"},
        }
    )
    values = check_inputs(plan, {"image": frame()["image"]})
    assert values["low"] == 3.0 and isinstance(values["low"], float)


def test_a_failing_node_is_named_with_what_it_was_given() -> None:
    plan = plan_from_data(
        {
            "capability": "fails",
            "inputs": {"data": "bytes"},
            "nodes": {"decode": {"type": "decode", "inputs": {"data": "data"}}},
            "outputs": {"image": "decode.image"},
        }
    )
    executor = Executor(plan)
    executor.load()
    with pytest.raises(InputError, match="not a decodable image"):  # a user's bad bytes are an input error
        executor.run([{"data": b"not a png"}])
    executor.nodes["decode"].run_batch = lambda inputs, params: []  # a family breaking its contract
    with pytest.raises(NodeFailed, match=r"node 'decode' \(decode\) failed on a batch of 1 .*returned 0 results"):
        executor.run([{"data": b"x"}])
