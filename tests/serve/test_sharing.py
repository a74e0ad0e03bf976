"""Two graphs served together whose nodes load the same depth model: the model runs once,
in an application of its own, and both capabilities call it; each answers at
/<capability> and its /health follows its own nodes. The same for SDXL between img2img.yaml
and hybrid.yaml, whose nodes differ in ControlNets, scheduler and wiring: one SDXL runs the
frames of both, each with its own graph's mode and ControlNets."""

import io
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from capgraph.engine.executor import Executor
from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.serve.app import CapabilityArgs, plan_app
from capgraph.serve.compile.sharing import MODEL_APP_PREFIX, find_shared, share_key
from capgraph.serve.operate.run import deploy_apps
from capgraph.serve.operate.together import applications, plan_all
from tests.conftest import GRAPHS
from tests.serve.support import decode_b64_png, frame, png_b64, wait_health

DEPTH_CN, CANNY_CN = "diffusers/controlnet-depth-sdxl-1.0", "diffusers/controlnet-canny-sdxl-1.0"


def write(tmp_path: Path, name: str, graph: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(graph))
    return path


@pytest.fixture
def two_graphs(tmp_path: Path) -> list[Path]:
    depth = yaml.safe_load((GRAPHS / "depth.yaml").read_text())
    depth.pop("applications")
    near = depth | {"capability": "near"}
    edges = {
        "capability": "edges-and-depth",
        "inputs": {"image": "image"},
        "nodes": {
            "d": depth["nodes"]["depth"]
            | {
                "params": {"model": depth["nodes"]["depth"]["params"]["model"], "colormap": "gray"}
            },  # a request param: still the same model
            "edges": {"type": "canny", "inputs": {"image": "image"}},
        },
        "outputs": {"depth_map": "d.depth_map", "edges": "edges.edges"},
    }
    return [write(tmp_path, "near", near), write(tmp_path, "edges", edges)]


def test_nodes_loading_the_same_model_share_it(two_graphs: list[Path]):
    near, edges = (load_plan(str(p)) for p in two_graphs)
    assert share_key(near.nodes["depth"]) == share_key(edges.nodes["d"])
    assert share_key(edges.nodes["edges"]) is None  # weightless: nothing to share
    (model,) = find_shared([near, edges]).values()
    assert model.app == MODEL_APP_PREFIX + share_key(near.nodes["depth"])
    assert model.users == (("near", "depth"), ("edges-and-depth", "d"))


def test_preflight_counts_a_shared_model_once(two_graphs: list[Path]):
    plans = [load_plan(str(p)) for p in two_graphs]
    apps = applications([str(p) for p in two_graphs], plans, {})
    assert [a.name for a in apps] == [apps[0].name, "near", "edges-and-depth"] and apps[0].model
    assert [a.route_prefix for a in apps] == [None, "/near", "/edges-and-depth"]
    placed = [p.deployment for b in plan_all(apps) for p in b.placed]
    assert sum(1 for d in placed if d.endswith("/depth")) == 1 and not any(d.endswith("/d") for d in placed)


def test_a_serve_config_of_several_graphs_deploys_what_capgraph_serve_would(tmp_path: Path):
    """`capgraph serve-config A B` writes the applications `capgraph serve A B` deploys, for
    `serve deploy`: Ray's own schema accepts it and every builder accepts its args."""
    import subprocess
    import sys

    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from capgraph.serve.app import build, build_model

    out = tmp_path / "together.yaml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "capgraph",
            "serve-config",
            str(GRAPHS / "depth.yaml"),
            str(GRAPHS / "hybrid.yaml"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
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


def sdxl_graphs(tmp_path: Path) -> list[Path]:
    """img2img.yaml and hybrid.yaml as shipped, and a graph steering SDXL with edges and depth (two ControlNets)."""
    both = {
        "capability": "edges-and-depth-sdxl",
        "inputs": {"image": "image", "prompt": "text"},
        "nodes": {
            "edges": {"type": "canny", "inputs": {"image": "image"}},
            "depth": {"type": "depth", "inputs": {"image": "image"}},
            "control": {"type": "depth_control", "inputs": {"depth": "depth.depth_map"}},
            "generate": {
                "type": "sdxl",
                "params": {
                    "controlnets": [{"model": CANNY_CN, "scale": 0.5}, {"model": DEPTH_CN}],
                    "scheduler": "euler",
                },
                "inputs": {"prompt": "prompt", "control_image": "edges.edges", "control_image_2": "control.image"},
            },
        },
        "outputs": {"image": "generate.image"},
    }
    return [GRAPHS / "img2img.yaml", GRAPHS / "hybrid.yaml", write(tmp_path, "both", both)]


def test_sdxl_is_shared_whatever_the_controlnets_scheduler_and_wiring(tmp_path: Path):
    """What decides SDXL's weights is its checkpoint and VAE: img2img.yaml's node (no
    ControlNet, `image` wired) and hybrid.yaml's (a depth ControlNet, euler_a, `control_image`
    wired) share one model, which loads every ControlNet its users name, once each."""
    img2img, hybrid, both = (load_plan(str(p)) for p in sdxl_graphs(tmp_path))
    assert (
        share_key(img2img.nodes["generate"]) == share_key(hybrid.nodes["generate"]) == share_key(both.nodes["generate"])
    )
    replaced_vae = hybrid.nodes["generate"].params.model_copy(update={"vae": "madebyollin/sdxl-vae-fp16-fix"})
    assert share_key(replace(hybrid.nodes["generate"], params=replaced_vae)) != share_key(hybrid.nodes["generate"])

    (model,) = find_shared([img2img, hybrid]).values()
    assert model.users == (("sdxl-img2img", "generate"), ("hybrid-depth-sdxl", "generate"))
    node = model.graph["nodes"]["sdxl"]
    assert [c["model"] for c in node["params"]["controlnets"]] == [DEPTH_CN]
    assert node["inputs"] == {
        "prompt": "prompt",
        "image": "image",
        "control_image": "control_image",
    }  # every port a user wires
    shared = plan_from_data(model.graph, "shared")  # a valid graph, as its application builds it
    assert shared.nodes["sdxl"].build().models() == [
        "stabilityai/stable-diffusion-xl-base-1.0",
        DEPTH_CN,
    ]  # what pre-flight weighs
    paths = [str(p) for p in sdxl_graphs(tmp_path)[:2]]
    placed = [p.deployment for b in plan_all(applications(paths, [img2img, hybrid], {})) for p in b.placed]
    assert [d for d in placed if d.endswith(("/sdxl", "/generate"))] == [model.app + "/sdxl"]  # counted once

    models = find_shared([img2img, hybrid, both])
    sdxl = next(m for m in models.values() if m.key.startswith("sdxl-"))
    assert len(sdxl.users) == 3
    assert sdxl.graph["nodes"]["sdxl"]["resources"] == {"gpu": 0.8}  # the most one of them wrote
    bigger = yaml.safe_load((GRAPHS / "hybrid.yaml").read_text())
    bigger["nodes"]["generate"]["resources"] = {"gpu": 0.9, "cpu": 2}
    (model,) = find_shared([img2img, load_plan(str(write(tmp_path, "bigger", bigger)))]).values()
    assert model.graph["nodes"]["sdxl"]["resources"] == {"gpu": 0.9, "cpu": 2}  # more than the first user's 0.8
    assert [c["model"] for c in sdxl.graph["nodes"]["sdxl"]["params"]["controlnets"]] == [
        CANNY_CN,
        DEPTH_CN,
    ]  # the union
    assert set(sdxl.graph["inputs"]) == {"prompt", "image", "control_image", "control_image_2"}


def test_one_sdxl_runs_each_frame_with_its_own_graphs_controlnets(tiny_models: Path, tmp_path: Path):
    """The shared SDXL in process: a batch mixing frames of img2img.yaml (no ControlNet),
    hybrid.yaml (depth) and a two-ControlNet graph gives each frame the image it gets alone,
    and each frame brings only the ports its graph wires."""
    plans = [load_plan(str(p)) for p in sdxl_graphs(tmp_path)]
    sdxl = next(m for m in find_shared(plans).values() if m.key.startswith("sdxl-"))
    executor = Executor(plan_from_data(sdxl.graph, "shared"), device="cpu")
    executor.load(warmup=False)
    image, control = frame(seed=1), 255 - frame(seed=2)
    frames = [
        {"prompt": "an oil painting", "image": image},
        {"prompt": "a castle", "control_image": control},
        {"prompt": "a forest", "control_image": control, "control_image_2": image},
    ]
    fast = {"steps": 2, "width": 64, "height": 64, "seed": 5}
    params = [{"sdxl": p.nodes["generate"].params.model_copy(update=fast)} for p in plans]
    together = executor.run_checked(frames, params).outputs
    alone = [executor.run_checked([f], [p]).outputs[0] for f, p in zip(frames, params)]
    for mixed, single in zip(together, alone):
        assert (
            np.abs(mixed["image"].astype(int) - single["image"].astype(int)).max() <= 2
        )  # batched matmuls may round differently
    node = executor.nodes["sdxl"]
    assert {(mode, nets) for mode, nets in node.pipes} == {
        ("img2img", ()),
        ("t2i", (DEPTH_CN,)),
        ("t2i", (CANNY_CN, DEPTH_CN)),
    }
    assert all(
        pipe.unet is node.base.unet for pipe in node.pipes.values()
    )  # every pipeline over one copy of the weights
    undriven = executor.run_checked(
        frames[1:2], [{"sdxl": params[1]["sdxl"].model_copy(update={"controlnet_scales": (0.0,)})}]
    )
    assert (
        np.abs(undriven.outputs[0]["image"].astype(int) - alone[1]["image"].astype(int)).max() > 0
    )  # the ControlNet steers it


@pytest.mark.slow
def test_three_graphs_served_together_run_one_depth_and_one_sdxl(cluster, tiny_models: Path, tmp_path: Path):
    """`capgraph serve graphs/depth.yaml graphs/img2img.yaml graphs/hybrid.yaml`: one depth
    replica for depth.yaml and hybrid.yaml, one SDXL replica for img2img.yaml and hybrid.yaml;
    each capability answers at its prefix and its /health follows its own nodes, img2img.yaml's
    frame re-drawn from its image, hybrid.yaml's steered by its depth ControlNet. (Tiny models
    here, and depth.yaml's depth at 0.1 GPU instead of 0.25: beside img2img.yaml's 0.8, all fit
    the one faked GPU.)"""
    from ray import serve

    small = yaml.safe_load((GRAPHS / "depth.yaml").read_text())
    small.pop("applications")
    small["nodes"]["depth"]["resources"] = {"gpu": 0.1}
    paths = [str(write(tmp_path, "depth", small)), str(GRAPHS / "img2img.yaml"), str(GRAPHS / "hybrid.yaml")]
    apps = applications(paths, [load_plan(p) for p in paths], {"ingress_cpus": 0.1})  # three ingresses on 2 CPUs
    depth, model = apps[0], apps[1]
    assert depth.name.startswith(MODEL_APP_PREFIX + "depth-") and model.name.startswith(MODEL_APP_PREFIX + "sdxl-")
    assert [a.name for a in apps[2:]] == ["depth", "sdxl-img2img", "hybrid-depth-sdxl"]
    port = int(cluster.url.rsplit(":", 1)[1])
    out = io.StringIO()
    try:
        assert deploy_apps(apps, "127.0.0.1", port, out) == 0, out.getvalue()
        assert "serving depth's depth, hybrid-depth-sdxl's depth" in out.getvalue()
        assert "serving sdxl-img2img's generate, hybrid-depth-sdxl's generate" in out.getvalue()
        running = serve.status().applications
        assert running[depth.name].deployments["depth"].replica_states == {"RUNNING": 1}
        assert running[model.name].deployments["sdxl"].replica_states == {"RUNNING": 1}
        assert not {"generate", "depth"} & {
            d for a in apps[2:] for d in running[a.name].deployments
        }  # no copy of their own
        answered = httpx.post(f"{cluster.url}/depth/v1/depth", json={"inputs": {"image": png_b64(frame())}}, timeout=60)
        assert answered.status_code == 200 and "depth_map" in answered.json()["outputs"], answered.text
        health = {
            capability: httpx.get(f"{cluster.url}/{capability}/health", timeout=10).json()
            for capability in ("depth", "sdxl-img2img", "hybrid-depth-sdxl")
        }
        assert set(health["depth"]["nodes"]) == {"depth"}
        assert set(health["sdxl-img2img"]["nodes"]) == {"fit", "generate"}
        assert {"depth", "generate"} <= set(health["hybrid-depth-sdxl"]["nodes"])

        def ask(capability: str, params: dict) -> httpx.Response:
            wait_health(f"{cluster.url}/{capability}", 60)
            inputs = {"image": png_b64(frame(64, 48)), "prompt": "a castle"}
            return httpx.post(
                f"{cluster.url}/{capability}/v1/{capability}", json={"inputs": inputs, "params": params}, timeout=120
            )

        redrawn = ask("sdxl-img2img", {"generate.steps": 2})
        assert redrawn.status_code == 200, redrawn.text
        assert decode_b64_png(redrawn.json()["outputs"]["image"]).shape == (48, 64, 3)  # img2img: the size of its frame
        fast = {"steps": 2, "seed": 3}
        steered, unsteered = (
            ask("hybrid-depth-sdxl", fast),
            ask("hybrid-depth-sdxl", fast | {"generate.controlnet_scales": [0.0]}),
        )
        assert steered.status_code == unsteered.status_code == 200, steered.text + unsteered.text
        images = [decode_b64_png(r.json()["outputs"]["image"]) for r in (steered, unsteered)]
        assert (
            images[0].shape == (192, 256, 3) and np.abs(images[0].astype(int) - images[1].astype(int)).max() > 0
        )  # its ControlNet steers it
    finally:
        for app in reversed(apps):
            if app.name in serve.status().applications:
                serve.delete(app.name)
