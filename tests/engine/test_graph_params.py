"""Graph-level request params: a graph names the node params a caller may set, so a request
sends `{"params": {"low": 50}}` without knowing node ids; the `node.param` form still works,
and every front end (the executor, /v1's checks and schema, the ai-runner route mappings)
takes the same names."""

import numpy as np
import pytest

from capgraph.engine.errors import GraphInvalid, InputError
from capgraph.engine.executor import Executor
from capgraph.engine.node import example_value
from capgraph.engine.types import PortType
from capgraph.engine.validate import plan_from_data
from capgraph.livepeer.settings import load_settings
from capgraph.serve.capability import http

GRAPH = {
    "capability": "edges-params",
    "inputs": {"image": "image"},
    "nodes": {
        "fit": {"type": "resize", "params": {"max_side": 256, "multiple": 8}, "inputs": {"image": "image"}},
        "edges": {"type": "canny", "inputs": {"image": "fit.image"}},
    },
    "outputs": {"edges": "edges.edges"},
    "params": {"low": "edges.low_threshold", "high": "edges.high_threshold", "width": "fit.width"},
}


@pytest.fixture(scope="module")
def plan():
    return plan_from_data(GRAPH)


def test_a_request_sets_a_param_by_the_graphs_name_or_as_node_param(plan):
    by_name = plan.params_for({"low": 30, "high": 60})
    as_node_param = plan.params_for({"edges.low_threshold": 30, "edges.high_threshold": 60})
    assert by_name["edges"] == as_node_param["edges"]
    assert by_name["edges"].low_threshold == 30 and by_name["fit"] is plan.nodes["fit"].params

    executor = Executor(plan)
    executor.load()
    frame = {"image": example_value(PortType.IMAGE, 64)}
    named = executor.run([frame], {"low": 30, "high": 60}).outputs[0]["edges"]
    plain = executor.run([frame], {"edges.low_threshold": 30, "edges.high_threshold": 60}).outputs[0]["edges"]
    assert np.array_equal(named, plain)


def test_a_bad_value_is_named_as_the_request_sent_it(plan):
    with pytest.raises(InputError) as caught:
        plan.params_for({"low": 1000})
    assert caught.value.field == "params.low" and "less than or equal to 255" in caught.value.message
    with pytest.raises(InputError) as twice:
        plan.params_for({"low": 30, "edges.low_threshold": 40})
    assert twice.value.field == "params.edges.low_threshold" and "already sets as 'low'" in twice.value.message
    with pytest.raises(InputError) as wrong_type:
        http.check_params(plan, {"low": "30"}, 1 << 20)
    assert wrong_type.value.field == "params.low" and 'send 30, not "30"' in wrong_type.value.message
    with pytest.raises(InputError) as too_big:
        http.check_params(plan, {"width": 2048}, 512 * 512)
    assert too_big.value.field == "params.width" and too_big.value.status == 413


def test_the_schema_lists_the_graphs_names_with_their_bounds(plan):
    params = http.schema(plan)["params"]
    assert params["low"]["maximum"] == 255 and params["low"]["description"].startswith("sets edges.low_threshold")
    assert "edges.low_threshold" in params  # the node.param form too
    body = http.request_schema(plan)["application/json"]["schema"]
    assert "low" in body["properties"]["params"]["properties"]


def test_ai_runner_routes_and_live_params_map_to_the_same_names(plan):
    section = {
        "routes": {"image-to-image": {"image": "image", "strength": "low", "images": "edges"}},
        "live": {"input": "image", "output": "edges", "params": {"threshold": "high"}},
    }
    pytest.importorskip("pytrickle", reason="live settings need the livepeer extra")
    settings = load_settings(plan, section)
    assert settings.routes["image-to-image"]["strength"] == "low"
    with pytest.raises(ValueError, match="not a graph input, a graph param or a settable node.param"):
        load_settings(plan, {"routes": {"image-to-image": {"image": "image", "strength": "lowest", "images": "edges"}}})


def test_a_graph_param_may_not_share_a_name_with_an_input():
    clash = GRAPH | {"inputs": {"image": "image", "low": {"type": "number", "default": 1.0}}}
    with pytest.raises(GraphInvalid) as caught:
        plan_from_data(clash)
    assert "'low' is both a graph input and a graph param" in str(caught.value)
