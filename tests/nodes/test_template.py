"""The template family: a caption (or any Text) becomes a prompt through a format string
with named fields, checked when the graph is validated, filled without running code."""

import pytest

from capgraph.engine.errors import GraphInvalid, InputError
from capgraph.engine.executor import Executor
from capgraph.engine.validate import plan_from_text

GRAPH = """\
capability: styled
inputs:
  subject: text
  style: {type: text, default: "watercolour, soft light"}
nodes:
  prompt:
    type: template
    params: {format: "{subject}, {style} {{no field}}", max_chars: 60}
    inputs: {subject: subject, style: style}
outputs:
  prompt: prompt.text
"""


def run(text: str, frame: dict, params: dict | None = None) -> str:
    executor = Executor(plan_from_text(text, "styled.yaml"))
    return executor.run([frame], params).outputs[0]["prompt"]


def test_fields_are_filled_and_braces_doubled_stay_literal() -> None:
    assert run(GRAPH, {"subject": "  a red barn "}) == "a red barn, watercolour, soft light {no field}"


def test_the_result_is_cut_at_a_word_boundary() -> None:
    text = run(GRAPH, {"subject": "a very long description of a house " * 5})
    assert len(text) <= 60 and not text.endswith(" ") and text.startswith("a very long description")


def test_a_request_may_restyle_but_only_with_wired_fields() -> None:
    assert (
        run(GRAPH, {"subject": "a barn"}, {"prompt.format": "{style}: {subject}"}) == "watercolour, soft light: a barn"
    )
    with pytest.raises(InputError) as unwired:
        run(GRAPH, {"subject": "a barn"}, {"prompt.format": "{caption}"})
    assert unwired.value.field == "params.prompt.format" and "'{caption}' has no wired port" in unwired.value.message


@pytest.mark.parametrize(
    ("format", "says"),
    [
        ("{subject.__class__}", "plain name"),
        ("{subject[0]}", "plain name"),
        ("{subject!r}", "conversion or format spec"),
        ("{subject:>99999}", "conversion or format spec"),
        ("{}", "plain name"),
        ("{0}", "plain name"),
        ("a { b", "literal braces"),
        ("{colour}", "'{colour}' is not a port of template; fields are caption, subject, style, text, extra"),
    ],
)
def test_a_format_with_anything_but_plain_fields_is_refused_at_validation(format: str, says: str) -> None:
    bad = GRAPH.replace('"{subject}, {style} {{no field}}"', repr(format).replace("'", '"'))
    with pytest.raises(GraphInvalid) as exc:
        plan_from_text(bad, "styled.yaml")
    [problem] = exc.value.errors
    assert problem.node == "prompt" and says in problem.message and problem.line == 8


def test_unwired_fields_and_unused_ports_name_the_node_and_port() -> None:
    bad = GRAPH.replace("inputs: {subject: subject, style: style}", "inputs: {subject: subject, text: style}")
    with pytest.raises(GraphInvalid) as exc:
        plan_from_text(bad, "styled.yaml")
    problems = {(p.node, p.port): p.message for p in exc.value.errors}
    assert problems == {
        ("prompt", "style"): "node 'prompt' (template): the format uses '{style}' but port 'style' is not wired.",
        ("prompt", "text"): "node 'prompt' (template): port 'text' is wired but the format never uses '{text}'.",
    }
