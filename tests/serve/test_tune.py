"""`capgraph tune` end to end on tiny models (batch sizes 1 and 2), and its overlay read
back by the builder: applied where it matches the graph, models and device, ignored
with a note where it does not. No Ray cluster."""

import io
from pathlib import Path

import pytest
import yaml

from capgraph.engine.errors import GraphInvalid
from capgraph.engine.validate import load_plan
from capgraph.serve.app import CapabilityArgs, plan_app
from capgraph.serve.cluster import preflight
from capgraph.serve.compile.overlay import (
    TUNED_DIR_ENV,
    find_overlay,
    fingerprint,
    measured_costs,
    read_overlay,
    write_measured,
)
from capgraph.serve.operate.tune import batch_sizes, parse_params, tune_graph
from tests.conftest import GRAPHS

HYBRID = str(GRAPHS / "hybrid.yaml")
LAPTOP = preflight.Cluster((preflight.Machine("laptop", 2, 0, 16 << 30),), source="test")
FAST = {"generate.steps": 1}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tuning run of the hybrid graph: the overlay it wrote and the table it printed."""
    folder = tmp_path_factory.mktemp("tuned")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        env.setenv(TUNED_DIR_ENV, str(folder))
        code = tune_graph(HYBRID, max_batch=2, repeats=1, params=FAST, out=out, err=err)
    assert code == 0, err.getvalue()
    return folder / "hybrid-depth-sdxl.yaml", out.getvalue()


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("CAPGRAPH_MODELS", "tiny")
    monkeypatch.setenv(TUNED_DIR_ENV, str(tmp_path))
    return tmp_path


def test_tune_profiles_every_node_and_writes_the_overlay(tuned):
    path, table = tuned
    overlay = read_overlay(path)
    plan = load_plan(HYBRID)
    assert overlay.capability == "hybrid-depth-sdxl" and overlay.fingerprint == fingerprint(plan)
    assert overlay.machine["device"] == "cpu" and overlay.machine["models"] == "tiny"
    assert set(overlay.profile) == set(plan.nodes) and all(set(t) == {1, 2} for t in overlay.profile.values())
    assert all(ms >= 0 for t in overlay.profile.values() for ms in t.values())
    assert overlay.request == {"size": 64, "params": FAST}
    assert set(overlay.nodes) == set(plan.nodes)
    assert all(fields["batch"]["max_size"] in (1, 2) for fields in overlay.nodes.values())
    for node_id in plan.nodes:
        assert node_id in table
    assert "b=1" in table and "b=2" in table and "deployment" in table
    assert path.read_text().startswith("# capgraph tune ")


def test_the_builder_applies_this_machines_overlay(tuned, tiny, monkeypatch: pytest.MonkeyPatch):
    path, _ = tuned
    monkeypatch.setenv(TUNED_DIR_ENV, str(path.parent))
    blueprint = plan_app(CapabilityArgs(graph=HYBRID), LAPTOP)
    assert any(n.startswith(f"tuned overlay {path} applied") for n in blueprint.notes), blueprint.notes
    overlay = read_overlay(path)
    for unit in blueprint.compiled.units:
        assert "(tuned)" in " ".join(unit.why)
        for node_id in unit.nodes:
            assert dict(unit.chunks).get(node_id, unit.max_batch_size) == overlay.nodes[node_id]["batch"]["max_size"]
    named = plan_app(CapabilityArgs(graph=HYBRID, tuned=str(path)), LAPTOP)
    assert [u.max_batch_size for u in named.compiled.units] == [u.max_batch_size for u in blueprint.compiled.units]
    ignored = plan_app(CapabilityArgs(graph=HYBRID, tuned=False), LAPTOP)
    assert not any("tuned overlay" in n for n in ignored.notes) and ignored.compiled.units[0].max_batch_size == 4


def test_an_overlay_that_no_longer_matches_is_ignored_with_a_note(tuned, tiny: Path):
    path, _ = tuned
    plan = load_plan(HYBRID)
    tree = yaml.safe_load(path.read_text())
    stale = tiny / "stale.yaml"
    stale.write_text(yaml.safe_dump(tree | {"fingerprint": "0" * 16}))
    overlay, notes = find_overlay(plan, str(stale), "cpu")
    assert overlay is None and "nodes, params or wiring changed" in notes[0] and "capgraph tune" in notes[0]
    other = tiny / "other.yaml"
    other.write_text(yaml.safe_dump(tree | {"machine": tree["machine"] | {"models": "real", "device": "cuda"}}))
    overlay, notes = find_overlay(plan, str(other), "cpu")
    assert overlay is None and "measured on real models" in notes[0] and "measured on cuda" in notes[0]
    assert find_overlay(plan, None, "cpu") == (None, [])  # nothing in this machine's folder: no note
    assert find_overlay(plan, "false", "cpu") == (None, [])


def test_a_named_overlay_that_cannot_be_read_stops_the_build(tiny: Path):
    with pytest.raises(GraphInvalid, match="cannot read tuned overlay"):
        plan_app(CapabilityArgs(graph=HYBRID, tuned=str(tiny / "missing.yaml")), LAPTOP)
    (tiny / "bad.yaml").write_text("format: 1\nnodes: {fit: {params: {}}}\n")
    with pytest.raises(GraphInvalid, match="an overlay sets only group, batch, resources, replicas"):
        plan_app(CapabilityArgs(graph=HYBRID, tuned=str(tiny / "bad.yaml")), LAPTOP)


def test_print_yaml_writes_nothing(tiny: Path):
    out, err = io.StringIO(), io.StringIO()
    assert tune_graph(str(GRAPHS / "edges.yaml"), max_batch=2, repeats=1, print_yaml=True, out=out, err=err) == 0, (
        err.getvalue()
    )
    text = out.getvalue()
    pasted = yaml.safe_load(text[text.index("# add these fields to the nodes of") :])
    assert set(pasted["nodes"]) == set(load_plan(GRAPHS / "edges.yaml").nodes)
    assert not any(tiny.iterdir())


def test_bad_arguments_exit_2(tiny: Path, tmp_path: Path):
    err = io.StringIO()
    assert tune_graph(HYBRID, params={"generate.model": "x"}, err=err, out=io.StringIO()) == 2
    assert "generate.model" in err.getvalue()
    broken = tmp_path / "broken.yaml"
    broken.write_text("capability: x\nnodes: {a: {type: nope}}\noutputs: {}\n")
    assert tune_graph(str(broken), err=io.StringIO(), out=io.StringIO()) == 2
    assert tune_graph(HYBRID, max_batch=0, err=io.StringIO(), out=io.StringIO()) == 2


def test_helpers():
    assert batch_sizes(1) == [1] and batch_sizes(8) == [1, 2, 4, 8] and batch_sizes(12) == [1, 2, 4, 8, 12]
    assert parse_params(["generate.steps=4", "generate.prompt=a castle", "x.flag=true"]) == {
        "generate.steps": 4,
        "generate.prompt": "a castle",
        "x.flag": True,
    }
    with pytest.raises(ValueError, match="node.param=value"):
        parse_params(["steps"])


def test_costs_measured_while_serving_feed_the_next_plan(tiny: Path):
    """Replicas record what their nodes cost on real frames; the next plan of the same graph
    on this machine uses those figures instead of the declared ones, and says so."""
    plan = load_plan(HYBRID)
    declared = plan_app(CapabilityArgs(graph=HYBRID), LAPTOP)
    assert [u.nodes for u in declared.compiled.units] == [tuple(plan.nodes)]  # upscale is cheap, as declared
    served = {"fit": {1: 0.5}, "depth": {1: 9.0}, "control": {1: 0.2}, "generate": {1: 80.0, 2: 150.0}}
    write_measured(plan, "generate", "cpu", served)
    assert measured_costs(plan, "cpu") == {}  # upscale never measured: no mixing of scales
    write_measured(plan, "upscale", "cpu", {"upscale": {1: 70.0}})
    assert set(measured_costs(plan, "cpu")) == set(plan.nodes) and measured_costs(plan, "cuda") == {}
    measured = plan_app(CapabilityArgs(graph=HYBRID), LAPTOP)
    assert any(n.startswith("costs measured while serving this graph") for n in measured.notes), measured.notes
    assert [u.nodes for u in measured.compiled.units] == [("fit", "depth", "control", "generate"), ("upscale",)]
    assert "70 ms a frame (measured)" in " ".join(measured.compiled.unit("upscale").why)
    ignored = plan_app(CapabilityArgs(graph=HYBRID, tuned=False), LAPTOP)
    assert [u.nodes for u in ignored.compiled.units] == [tuple(plan.nodes)]
