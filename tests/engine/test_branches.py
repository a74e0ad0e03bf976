"""Branches, as a graph author meets them: a node that runs only `when:` a Bool input or a
switch holds, a `first` node where the branches meet, validation that every output has a
value on every branch, the in-process run skipping what does not run, and the condition in
the schema, the console's figures and the pictures."""

import numpy as np
import pytest

from capgraph.engine.errors import GraphInvalid, InputError
from capgraph.engine.executor import Executor
from capgraph.engine.render import dot, mermaid, picture
from capgraph.engine.validate import load_plan, plan_from_text
from capgraph.serve.capability.http import check_params, render_json, render_outputs, schema
from capgraph.serve.capability.traffic import Traffic
from tests.conftest import GRAPHS

GRAPH = """\
capability: sizes
inputs:
  image: image
  small: {type: bool, default: false, description: answer the small frame}
params:
  border: {type: bool, default: true, description: pad to a square}
nodes:
  fit:
    type: resize
    params: {max_side: 64}
    inputs: {image: image}
  big:
    type: resize
    when: {not: small}
    params: {width: 128, height: 128}
    inputs: {image: fit.image}
  square:
    type: resize
    when: border
    params: {width: 96, height: 96, fit: pad}
    inputs: {image: big.image}
  pick:
    type: first
    inputs: {a: square.image, b: fit.image}
outputs:
  image: pick.value
"""


def frame(width: int = 100, height: int = 80) -> dict:
    return {"image": np.full((height, width, 3), 200, np.uint8)}


@pytest.fixture(scope="module")
def executor() -> Executor:
    executor = Executor(plan_from_text(GRAPH, "sizes.yaml"))
    executor.load(warmup=False)
    return executor


def test_a_bool_input_turns_a_node_off_and_whatever_reads_only_it(executor):
    both = executor.run([frame(), frame() | {"small": True}])
    assert [o["image"].shape for o in both.outputs] == [(96, 96, 3), (48, 64, 3)]  # (H, W): 100x80 fits 64 wide
    assert both.skipped == [(), ("big", "square")]  # square reads big: skipped with it

    small = executor.run([frame() | {"small": True}])
    assert set(small.timings_ms) == {"fit", "pick"}  # a skipped node is not run: no timing


def test_a_switch_is_a_request_param(executor):
    plain = executor.run([frame()], {"border": False})
    # fit's frame: big's `when:` holds, but nothing that runs reads it, so it is skipped too
    assert plain.outputs[0]["image"].shape == (48, 64, 3)
    assert plain.skipped == [("big", "square")]
    with pytest.raises(InputError) as caught:
        executor.run([frame()], {"border": "yes"})
    assert caught.value.field == "params.border" and "true or false" in caught.value.message


def test_an_output_without_a_value_on_some_branch_names_the_node_and_line():
    text = GRAPH.replace("image: pick.value", "image: square.image")
    with pytest.raises(GraphInvalid) as caught:
        plan_from_text(text, "sizes.yaml")
    (error,) = caught.value.errors  # at the output's line, naming the node whose `when:` leaves it empty
    assert error.node == "big" and error.line == 26
    assert str(error).startswith(
        "sizes.yaml:26:3: output 'image' has no value when small is true and border is true: it comes from "
        "'square.image', and node 'big' (line 14) is skipped then (when: not small)."
    )


def test_a_condition_must_be_a_bool_input_or_a_switch():
    for when, fragment in (
        ("smal", "no Bool graph input or switch param named 'smal'. Did you mean 'small'?"),
        ("image", "'image' is a Image graph input; a condition must be a Bool"),
        ("{nor: small}", "when: Value error, must name a Bool graph input or switch param"),
    ):
        with pytest.raises(GraphInvalid) as caught:
            plan_from_text(GRAPH.replace("when: {not: small}", f"when: {when}"), "sizes.yaml")
        assert fragment in str(caught.value) and caught.value.errors[0].line == 14, str(caught.value)
        assert caught.value.errors[0].node == "big"


def test_first_needs_both_branches_wired():
    with pytest.raises(GraphInvalid, match="wire both 'a' and 'b'"):
        plan_from_text(GRAPH.replace("{a: square.image, b: fit.image}", "{a: square.image}"), "sizes.yaml")


def test_schema_names_the_switch_and_the_conditions():
    plan = load_plan(GRAPHS / "hybrid-branch.yaml")
    answer = schema(plan)
    assert answer["params"]["upscale"]["type"] == "boolean" and answer["params"]["upscale"]["default"] is True
    assert answer["params"]["upscale"]["description"].startswith("switch: runs upscale when true")
    assert answer["conditions"] == {"upscale": {"from": "params", "runs_when_true": ["upscale"], "runs_when_false": []}}
    resolved = check_params(plan, {"upscale": False, "steps": 2}, 1 << 20)
    assert plan.skipped({"image": None, "prompt": "p"}, resolved) == ("upscale",)
    assert b'"skipped":["upscale"]' in render_outputs(plan, {"image": np.zeros((8, 8, 3), np.uint8)}, {}, ("upscale",))
    assert "conditions" not in schema(load_plan(GRAPHS / "hybrid.yaml"))  # no branches: the answer is as before
    render_json(answer)  # JSON-ready


def test_render_shows_the_condition():
    plan = load_plan(GRAPHS / "hybrid-branch.yaml")
    text = mermaid(plan)
    assert 'upscale["<b>upscale</b><br/>upscale · when upscale"]' in text
    assert 'sw_upscale{{"upscale · switch, default true"}}' in text
    assert 'sw_upscale -. "when upscale" .-> upscale' in text
    graph = dot(plan)
    assert 'sw_upscale -> upscale [label="when upscale", style=dotted];' in graph and "rounded,filled,dashed" in graph
    drawn = picture(plan)
    assert next(n for n in drawn["nodes"] if n["id"] == "upscale")["when"] == "upscale"
    assert drawn["conditions"] == [{"from": "sw_upscale", "to": "upscale", "label": "when upscale"}]
    inputs = plan_from_text(GRAPH, "sizes.yaml")
    assert 'in_small -. "when not small" .-> big' in mermaid(inputs)


def test_the_console_counts_skipped_frames():
    traffic = Traffic(clock=lambda: 10.0)
    traffic.frame({"fit": {"ms": 1.0, "batch": 1}}, skipped=("big",))
    figures = traffic.summary(["fit", "big"])
    assert figures["big"]["skipped"] == 1 and figures["big"]["frames"] == 0 and figures["fit"]["skipped"] == 0
