"""Pre-flight against described clusters, the CPU fallback and weight-file sizes: no Ray."""

from pathlib import Path

import pytest

from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.serve.app import CapabilityArgs, plan_app
from capgraph.serve.cluster import preflight
from capgraph.serve.compile.compiler import compile_plan
from tests.conftest import GRAPHS

NO_GPU = preflight.Cluster((preflight.Machine("laptop", 2, 0),), source="test")
ONE_GPU = preflight.Cluster((preflight.Machine("box", 8, 1),), "H100", "test")


def quarters(count: int, gpu: float = 0.25, cpu: float | None = None):
    nodes = {
        f"n{i}": {
            "type": "resize",
            "inputs": {"image": "image"},
            "resources": {"gpu": gpu} | ({"cpu": cpu} if cpu else {}),
        }
        for i in range(count)
    }
    plan = plan_from_data(
        {
            "capability": "q",
            "inputs": {"image": "image"},
            "nodes": nodes,
            "outputs": {f"o{i}": f"n{i}.image" for i in range(count)},
        }
    )
    return compile_plan(plan)


def test_fractions_pack_onto_one_gpu():
    assert preflight.check_fit(quarters(4), ONE_GPU, 0.25) == []
    (problem,) = preflight.check_fit(quarters(5), ONE_GPU, 0.25)
    assert (
        "deployment 'n4' needs 0.25 GPU" in problem and "taken by n0 (0.25), n1 (0.25), n2 (0.25), n3 (0.25)" in problem
    )
    two = preflight.Cluster((preflight.Machine("a", 8, 1), preflight.Machine("b", 8, 1)))
    assert preflight.check_fit(quarters(8), two, 0.25) == []


def test_fractions_do_not_split_across_gpus():
    two_gpus = preflight.Cluster((preflight.Machine("box", 8, 2),))
    assert preflight.check_fit(quarters(2, gpu=0.6), two_gpus, 0.25) == []  # one per GPU
    assert len(preflight.check_fit(quarters(3, gpu=0.6), two_gpus, 0.25)) == 1  # 0.4 + 0.4 left is not 0.6


def test_cpu_shortage_is_named():
    problems = preflight.check_fit(quarters(3, gpu=0, cpu=1.0), NO_GPU, 0.25)
    assert problems == [
        (
            "deployment 'n2' needs 1 CPU and does not fit: the cluster has 2 CPU in all; "
            "lower 'resources.cpu' on its nodes."
        ),
        "deployment 'capgraph-ingress' needs 0.25 CPU and does not fit",
    ]


def test_no_gpu_falls_back_to_cpu_with_one_note():
    blueprint = plan_app(CapabilityArgs(graph=str(GRAPHS / "hybrid.yaml")), NO_GPU)
    assert all(u.num_gpus == 0 for u in blueprint.compiled.units)
    fallback = [n for n in blueprint.notes if "no GPU in the cluster" in n]
    assert len(fallback) == 1 and "running depth, generate, upscale on the CPU" in fallback[0]
    assert blueprint.problems == ()
    summary = blueprint.describe()
    assert summary["demand"] == "0 GPU and 1.75 CPU over 1 node replica"  # the planner fuses the CPU-bound graph


def test_hybrid_fits_one_gpu():
    blueprint = plan_app(CapabilityArgs(graph=str(GRAPHS / "hybrid.yaml")), ONE_GPU)
    assert blueprint.problems == () and not any("no GPU" in n for n in blueprint.notes)
    # weights not on this machine: 0.25 for each of the three model nodes
    assert sum(u.num_gpus for u in blueprint.compiled.units) == pytest.approx(0.75)


def test_local_cluster_reads_ray_override(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", '{"GPU": 2, "CPU": 4}')
    cluster = preflight.local_cluster(probe_gpus=True)
    assert (cluster.gpus, cluster.cpus) == (2, 4.0)


def test_weight_files_count_one_variant(tmp_path: Path):
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 400)
    (unet / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x" * 200)
    (unet / "diffusion_pytorch_model.bin").write_bytes(b"x" * 999)  # safetensors win in this folder
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "model.pth").write_bytes(b"x" * 50)
    (tmp_path / "README.md").write_text("not weights")
    assert preflight._folder_weight_bytes(tmp_path) == 250


def test_weight_bytes_of_a_model_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1234)
    plan = load_plan(GRAPHS / "depth.yaml")
    node = next(n for n in plan.nodes.values() if n.family.uses_gpu)
    local = plan_from_data(
        plan.spec.sections()
        | {
            "nodes": {
                node.id: node.spec.model_dump(exclude_defaults=True)
                | {"params": node.spec.params | {"model": str(tmp_path)}}
            },
            "outputs": {"depth": f"{node.id}.depth_map"},
        }
    )
    assert preflight.weight_file_bytes(local.nodes[node.id]) == 1234
    missing = plan_from_data(
        plan.spec.sections()
        | {
            "nodes": {
                node.id: node.spec.model_dump(exclude_defaults=True)
                | {"params": node.spec.params | {"model": "nobody/no-such-model"}}
            },
            "outputs": {"depth": f"{node.id}.depth_map"},
        }
    )
    assert preflight.weight_file_bytes(missing.nodes[node.id]) is None
    monkeypatch.setenv("CAPGRAPH_MODELS", "tiny")
    assert preflight.weight_file_bytes(missing.nodes[node.id]) == 0


def test_fractions_are_fitted_machine_by_machine():
    """Two 0.6 nodes do not fit one machine with one GPU, and do fit two machines with one
    GPU each: `capgraph plan --address` shows which machine each one would land on."""
    one = preflight.Cluster((preflight.Machine("a", 8, 1),))
    (problem,) = preflight.check_fit(quarters(2, gpu=0.6), one, 0.25)
    assert "deployment 'n1' needs 0.6 GPU" in problem and "GPU 0 on a has 0.40 free, taken by n0 (0.6)" in problem
    two = preflight.Cluster((preflight.Machine("a", 8, 1), preflight.Machine("b", 8, 1)))
    fit = preflight.place(quarters(2, gpu=0.6), two, 0.25)
    assert fit.problems == ()
    assert [p.describe() for p in fit.placed] == [
        "n0 -> a GPU 0 (0.6), 0.25 CPU",
        "n1 -> b GPU 0 (0.6), 0.25 CPU",
        "capgraph-ingress -> a, 0.25 CPU",
    ]


def test_replicas_of_one_deployment_spread_over_machines():
    plan = plan_from_data(
        {
            "capability": "q",
            "inputs": {"image": "image"},
            "nodes": {
                "n": {
                    "type": "resize",
                    "inputs": {"image": "image"},
                    "replicas": 4,
                    "resources": {"gpu": 0.25, "cpu": 1},
                }
            },
            "outputs": {"o": "n.image"},
        }
    )
    three = preflight.Cluster(tuple(preflight.Machine(name, 4, 1) for name in "abc"))
    fit = preflight.place(compile_plan(plan), three, 0.25)
    assert [p.machine for p in fit.placed if p.deployment == "n"] == ["a", "b", "c", "a"]
