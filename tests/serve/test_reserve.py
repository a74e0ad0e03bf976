"""Reservations that leave room to scale (issue 25): a user's session on a 2-CPU laptop."""

from pathlib import Path

import pytest
import yaml

from capgraph.engine.validate import load_plan
from capgraph.serve.app import CapabilityArgs, plan_app
from capgraph.serve.cluster import preflight
from capgraph.serve.operate.together import applications, plan_all
from tests.conftest import GRAPHS

LAPTOP = preflight.Cluster((preflight.Machine("laptop", 2, 0, 8e9),), source="test")
ONE_GPU = preflight.Cluster((preflight.Machine("box", 8, 1, 64e9),), "H100", "test")


def scaling_depth(tmp_path: Path, **resources: float) -> str:
    graph = yaml.safe_load((GRAPHS / "depth.yaml").read_text())
    graph.pop("applications")
    graph["nodes"]["depth"] |= {"replicas": {"min": 1, "max": 3}, "resources": resources}
    path = tmp_path / "depth.yaml"
    path.write_text(yaml.safe_dump(graph))
    return str(path)


def test_an_autoscaling_node_reserves_room_for_its_maximum(tmp_path: Path):
    blueprint = plan_app(CapabilityArgs(graph=scaling_depth(tmp_path, gpu=0.3)), LAPTOP)
    (unit,) = blueprint.compiled.units
    assert unit.max_replicas == 3
    assert unit.num_cpus == 0.5  # was 1.75: 3 x 0.5 + the ingress's 0.25 fit 2 CPUs
    assert 3 * unit.num_cpus + 0.25 <= 2
    assert any("all 3 replicas it may scale to fit" in line for line in unit.why)
    assert blueprint.problems == ()
    assert not any(preflight.SCALING in n for n in blueprint.notes)  # the maximum fits


def test_a_written_reservation_too_big_for_the_maximum_is_named(tmp_path: Path):
    blueprint = plan_app(CapabilityArgs(graph=scaling_depth(tmp_path, gpu=0.3, cpu=1.75)), LAPTOP)
    assert blueprint.problems == ()  # the minimum runs
    (note,) = [n for n in blueprint.notes if preflight.SCALING in n]
    assert "deployment 'depth' may scale to 3 replicas, but 2 of them (1.75 CPU each)" in note
    assert "lower 'replicas.max'" in note
    assert any(preflight.SCALING in n for n in blueprint.describe()["notes"])  # capgraph plan shows it


def test_three_graphs_together_fit_two_cpus(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CAPGRAPH_MODELS", "tiny")
    paths = [str(GRAPHS / n) for n in ("depth.yaml", "hybrid.yaml", "img2img.yaml")]
    apps = applications(paths, [load_plan(p) for p in paths], {})
    blueprints = plan_all(apps, LAPTOP)
    assert blueprints[0].problems == ()  # was: 'capgraph-ingress (replica 3 of 3)' needs 0.25 CPU and does not fit
    reserved = sum(p.cpus for b in blueprints for p in b.placed if p.deployment != "capgraph-ingress") + 3 * 0.25
    assert reserved <= 2
    hybrid = next(b for a, b in zip(apps, blueprints) if a.name == "hybrid-depth-sdxl")
    assert all(0 < u.num_cpus < 0.25 for u in hybrid.compiled.units if u.remote is None)  # crowded: lower floors


def test_gpus_that_cannot_hold_the_maximum_are_named_but_the_minimum_still_deploys(tmp_path: Path):
    """An autoscaling cluster (KubeRay) may add the GPUs: the plan says so, it does not refuse."""
    blueprint = plan_app(CapabilityArgs(graph=scaling_depth(tmp_path, gpu=0.4)), ONE_GPU)
    assert not blueprint.problems
    (note,) = [n for n in blueprint.notes if "may scale to" in n]
    assert "deployment 'depth' may scale to 3 replicas, but 1 of them (0.4 GPU" in note and "add GPUs" in note


def test_a_graph_whose_gpus_cannot_fit_is_refused(tmp_path: Path):
    graph = yaml.safe_load((GRAPHS / "img2img.yaml").read_text())
    graph.pop("applications")
    graph["nodes"]["generate"]["resources"] = {"gpu": 2}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(graph))
    blueprint = plan_app(CapabilityArgs(graph=str(path)), ONE_GPU)
    assert any("deployment 'generate' needs 2 GPU" in p for p in blueprint.problems)
