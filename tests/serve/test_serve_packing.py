"""Fractional GPUs on a cluster with one (faked) GPU: four nodes at 0.25 are scheduled by Ray
and serve; a fifth is named by the pre-flight before anything is deployed."""

import httpx
import pytest

from tests.serve.support import decode_b64_png, frame, png_b64, wait_health

pytestmark = pytest.mark.slow


def graph(count: int) -> dict:
    return {
        "capability": "packing",
        "inputs": {"image": {"type": "image"}},
        "nodes": {
            f"n{i}": {
                "type": "resize",
                "params": {"width": 16 * (i + 1), "height": 16},
                "inputs": {"image": "image"},
                "resources": {"gpu": 0.25},
            }
            for i in range(count)
        },
        "outputs": {f"o{i}": f"n{i}.image" for i in range(count)},
    }


def test_four_quarter_gpu_nodes_share_one_gpu(serve_url: str):
    from ray import serve

    from capgraph.serve.app import CapabilityArgs, bind, plan_app

    for name in ("hybrid", "hybrid-fused"):  # left by another module: its fractions hold the GPU
        if name in serve.status().applications:
            serve.delete(name)
    args = CapabilityArgs(graph=graph(4))
    blueprint = plan_app(args)
    assert blueprint.cluster.gpus == 1 and blueprint.problems == ()
    assert [u.num_gpus for u in blueprint.compiled.units] == [0.25] * 4
    serve.run(bind(blueprint, args), name="packing", route_prefix="/packing")
    try:
        wait_health(serve_url + "/packing", 30)
        reply = httpx.post(serve_url + "/packing/v1/packing", json={"inputs": {"image": png_b64(frame())}}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert [decode_b64_png(reply.json()["outputs"][f"o{i}"]).shape[1] for i in range(4)] == [16, 32, 48, 64]
        assert {d.status for d in serve.status().applications["packing"].deployments.values()} == {"HEALTHY"}
    finally:
        serve.delete("packing")


def test_a_fifth_quarter_does_not_fit(serve_url: str, capsys: pytest.CaptureFixture[str]):
    from capgraph.serve.app import CapabilityArgs, build, plan_app

    blueprint = plan_app(CapabilityArgs(graph=graph(5)))
    assert len(blueprint.problems) == 1
    problem = blueprint.problems[0]
    assert problem.startswith("deployment 'n4' needs 0.25 GPU and 0.25 CPU and does not fit")
    assert "has 0.00 free, taken by n0 (0.25), n1 (0.25), n2 (0.25), n3 (0.25)" in problem
    with pytest.raises(SystemExit) as exit_:
        build(CapabilityArgs(graph=graph(5)))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "capability 'packing' does not fit the cluster (1.25 GPU and 1.25 CPU over 5 node replicas wanted" in err
    assert "preflight: warn" in err
