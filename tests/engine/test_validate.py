"""A graph author's mistakes: each bad graph names the file, line, node and port."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from capgraph.engine.errors import GraphInvalid
from capgraph.engine.validate import load_plan, plan_from_data, plan_from_text

BAD = Path(__file__).resolve().parent.parent / "graphs"
BAD_FILES = sorted(BAD.glob("bad_*.yaml"))


def expectation(path: Path) -> tuple[str, int]:
    text = path.read_text()
    return re.search(r"^# expect: (.*)$", text, re.M)[1], int(re.search(r"^# line: (\d+)$", text, re.M)[1])


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_graph_is_reported_with_file_line_and_message(path: Path) -> None:
    fragment, line = expectation(path)
    with pytest.raises(GraphInvalid) as caught:
        load_plan(path)
    matching = [p for p in caught.value.errors if fragment in str(p)]
    assert matching, f"no error contains {fragment!r}:\n{caught.value}"
    assert matching[0].file == str(path)
    assert matching[0].line == line
    assert str(matching[0]).startswith(f"{path}:{line}:")


def test_corpus_covers_every_error_the_issue_lists() -> None:
    names = {p.stem for p in BAD_FILES}
    for kind in (
        "yaml_syntax",
        "unknown_type",
        "unknown_param",
        "param_type",
        "missing_input",
        "unknown_node_ref",
        "unknown_output_port",
        "type_mismatch",
        "cycle",
        "duplicate_id",
        "output_unwired",
        "billion_laughs",
    ):
        assert f"bad_{kind}" in names


def test_all_problems_are_reported_at_once() -> None:
    text = """
capability: many-faults
inputs: {image: image}
nodes:
  a: {type: cany, inputs: {image: image}}
  b: {type: canny, params: {low_threshold: -1}, inputs: {image: image}}
  c: {type: depth_control, inputs: {depth: image}}
outputs: {a: a.edges, b: b.edges, c: c.image}
"""
    with pytest.raises(GraphInvalid) as caught:
        plan_from_text(text, "many.yaml")
    codes = [p.code for p in caught.value.errors]
    assert codes == ["unknown_type", "bad_value", "type_mismatch"]
    assert [p.node for p in caught.value.errors] == ["a", "b", "c"]
    assert caught.value.errors[2].port == "depth"
    assert "3 errors found." in str(caught.value)


def test_nodes_that_reach_no_output_are_a_warning_not_an_error() -> None:
    plan = load_plan(BAD / "warn_dead_end.yaml")
    assert [w.code for w in plan.warnings] == ["dead_end"]
    assert plan.warnings[0].node == "edges" and plan.warnings[0].severity == "warning"


def test_a_valid_graph_becomes_a_plan_in_topological_order() -> None:
    plan = plan_from_data(
        {
            "capability": "order",
            "inputs": {"image": {"type": "image"}},
            "nodes": {
                "edges": {"type": "canny", "inputs": {"image": "fit.image"}},
                "fit": {
                    "type": "resize",
                    "inputs": {"image": "image"},
                    "resources": {"gpu": 0.25},
                    "batch": {"max_size": 4},
                },
            },
            "outputs": {"edges": "edges.edges"},
        }
    )
    assert list(plan.nodes) == ["fit", "edges"]
    assert str(plan.nodes["edges"].inputs["image"]) == "fit.image"
    assert plan.nodes["fit"].spec.resources.gpu == 0.25 and plan.nodes["fit"].spec.batch.max_size == 4


def test_ray_serve_keys_are_allowed_beside_the_graph() -> None:
    text = (
        BAD / "warn_dead_end.yaml"
    ).read_text() + "applications:\n  - name: x\n    import_path: capgraph.serve.app:build\n"
    assert plan_from_text(text).capability == "dead-end"


def test_cli_validate_exits_1_and_lists_every_bad_file_as_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "capgraph", "validate", "--json", *map(str, BAD_FILES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert len(report) == len(BAD_FILES) and not any(entry["valid"] for entry in report)
    for entry, path in zip(report, BAD_FILES):
        fragment, line = expectation(path)
        assert any(
            fragment in p["message"] + " " + p.get("hint", "") and p["line"] == line for p in entry["problems"]
        ), entry
    assert "Traceback" not in done.stderr


def test_cli_validate_prints_file_line_and_exits_1_without_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "capgraph", "validate", str(BAD / "bad_type_mismatch.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        f"{BAD / 'bad_type_mismatch.yaml'}:13:7: cannot connect 'fit.image' (Image) to 'control.depth' (DepthMap)."
        in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_cli_validate_usage_error_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "capgraph", "validate", "no-such-graph.yaml"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "no-such-graph.yaml" in done.stderr
