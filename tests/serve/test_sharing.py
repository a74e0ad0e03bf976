"""Two graphs served together whose nodes load the same depth model: the model runs once,
in an application of its own, and both capabilities call it; each answers at
/<capability> and its /health follows its own nodes."""

import io
from pathlib import Path

import httpx
import pytest
import yaml

from capgraph.engine.validate import load_plan
from capgraph.serve.app import CapabilityArgs, plan_app
from capgraph.serve.run import deploy_apps
from capgraph.serve.sharing import MODEL_APP_PREFIX, find_shared, share_key
from capgraph.serve.together import applications, plan_all
from tests.conftest import GRAPHS
from tests.serve.support import frame, png_b64, wait_health


def write(tmp_path: Path, name: str, graph: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(graph))
    return path


@pytest.fixture
def two_graphs(tmp_path: Path) -> list[Path]:
    depth = yaml.safe_load((GRAPHS / "depth.yaml").read_text())
    depth.pop("applications")
    near = depth | {"capability": "near"}
    edges = {"capability": "edges-and-depth", "inputs": {"image": "image"},
             "nodes": {"d": depth["nodes"]["depth"] | {"params": {"model": depth["nodes"]["depth"]["params"]["model"],
                                                                  "colormap": "gray"}},  # a request param: still the same model
                       "edges": {"type": "canny", "inputs": {"image": "image"}}},
             "outputs": {"depth_map": "d.depth_map", "edges": "edges.edges"}}
    return [write(tmp_path, "near", near), write(tmp_path, "edges", edges)]


def test_nodes_loading_the_same_model_share_it(two_graphs: list[Path]):
    near, edges = (load_plan(str(p)) for p in two_graphs)
    assert share_key(near.nodes["depth"]) == share_key(edges.nodes["d"])
    assert share_key(edges.nodes["edges"]) is None  # weightless: nothing to share
    (model,) = find_shared([near, edges]).values()
    assert model.app == MODEL_APP_PREFIX + share_key(near.nodes["depth"])
    assert model.users == (("near", "depth"), ("edges-and-depth", "d"))
    other = load_plan(str(GRAPHS / "hybrid.yaml"))
    assert share_key(other.nodes["generate"]) != share_key(load_plan(str(GRAPHS / "img2img.yaml")).nodes["generate"])  # ControlNets differ


def test_preflight_counts_a_shared_model_once(two_graphs: list[Path]):
    plans = [load_plan(str(p)) for p in two_graphs]
    apps = applications([str(p) for p in two_graphs], plans, {})
    assert [a.name for a in apps] == [apps[0].name, "near", "edges-and-depth"] and apps[0].model
    assert [a.route_prefix for a in apps] == [None, "/near", "/edges-and-depth"]
    placed = [p.deployment for b in plan_all(apps) for p in b.placed]
    assert sum(1 for d in placed if d.endswith("/depth")) == 1 and not any(d.endswith("/d") for d in placed)


@pytest.mark.slow
def test_two_graphs_served_together_share_one_depth_replica(cluster, two_graphs: list[Path]):
    from ray import serve

    plans = [load_plan(str(p)) for p in two_graphs]
    apps = applications([str(p) for p in two_graphs], plans, {})
    port = int(cluster.url.rsplit(":", 1)[1])
    out = io.StringIO()
    try:
        assert deploy_apps(apps, "127.0.0.1", port, out) == 0, out.getvalue()
        assert f"shared model '{apps[0].name}' is healthy" in out.getvalue() and "serving near's depth, edges-and-depth's d" in out.getvalue()
        running = serve.status().applications
        depth_replicas = [n for name, app in running.items() for dep, d in app.deployments.items()
                          if dep in ("depth", "d") for state, n in d.replica_states.items()]
        assert depth_replicas == [1]  # one copy of the weights for both graphs
        image = png_b64(frame())
        for capability in ("near", "edges-and-depth"):
            wait_health(f"{cluster.url}/{capability}", 60)
            reply = httpx.post(f"{cluster.url}/{capability}/v1/{capability}", json={"inputs": {"image": image}}, timeout=60)
            assert reply.status_code == 200, reply.text
            assert "depth_map" in reply.json()["outputs"]
            health = httpx.get(f"{cluster.url}/{capability}/health", timeout=10).json()
            assert set(health["nodes"]) == {"near": {"depth"}, "edges-and-depth": {"d", "edges"}}[capability]
    finally:
        for app in reversed(apps):
            if app.name in serve.status().applications:
                serve.delete(app.name)


def test_a_serve_config_of_several_graphs_deploys_what_capgraph_serve_would(tmp_path: Path):
    """`capgraph serve-config A B` writes the applications `capgraph serve A B` deploys, for
    `serve deploy`: Ray's own schema accepts it and every builder accepts its args."""
    import subprocess
    import sys

    from ray.serve.schema import ServeDeploySchema
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve import Application

    from capgraph.serve.app import build, build_model

    out = tmp_path / "together.yaml"
    done = subprocess.run([sys.executable, "-m", "capgraph", "serve-config", str(GRAPHS / "depth.yaml"),
                           str(GRAPHS / "hybrid.yaml"), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config)
    model, depth, hybrid = config["applications"]
    assert model["name"].startswith(MODEL_APP_PREFIX + "depth-") and model["route_prefix"] is None
    assert (depth["route_prefix"], hybrid["route_prefix"]) == ("/depth", "/hybrid-depth-sdxl")
    assert depth["args"]["shared"] == {"depth": model["name"]} == hybrid["args"]["shared"]
    assert isinstance(call_user_app_builder_with_args_if_necessary(build_model, model["args"]), Application)
    for entry in (depth, hybrid):
        assert isinstance(call_user_app_builder_with_args_if_necessary(build, entry["args"]), Application)
    # each builder plans its application on its third of the machines, as `capgraph serve` does
    assert {entry["args"]["share_of"] for entry in config["applications"]} == {3}
    paths = [str(GRAPHS / "depth.yaml"), str(GRAPHS / "hybrid.yaml")]
    apps = applications(paths, [load_plan(p) for p in paths], {})
    together = {app.name: blueprint for app, blueprint in zip(apps, plan_all(apps))}
    for entry in config["applications"]:
        alone = plan_app(CapabilityArgs(**entry["args"]), ingress=entry["route_prefix"] is not None)
        assert units(alone) == units(together[entry["name"]]), entry["name"]


def units(blueprint) -> list[tuple[str, float, int]]:
    return [(u.name, u.num_cpus, u.threads) for u in blueprint.compiled.units]


def test_what_is_not_shared(two_graphs: list[Path], tmp_path: Path):
    """fuse: all keeps every node in its graph's one deployment, and a node in a group stays
    with its group: no shared model application is made for them."""
    plans = [load_plan(str(p)) for p in two_graphs]
    assert not any(a.model for a in applications([str(p) for p in two_graphs], plans, {"fuse": "all"}))
    grouped = yaml.safe_load(two_graphs[1].read_text())
    grouped["nodes"]["d"]["group"] = "g"
    grouped["nodes"]["edges"]["group"] = "g"
    path = write(tmp_path, "grouped", grouped)
    assert find_shared([plans[0], load_plan(str(path))]) == {}
