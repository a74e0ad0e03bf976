"""The compiled shape of graphs, inspected without starting Ray."""

import pytest

from capgraph.engine.errors import GraphInvalid
from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.serve.compile.compiler import GIB, compile_plan, gpu_fraction
from tests.conftest import GRAPHS


@pytest.fixture(scope="module")
def hybrid():
    return load_plan(GRAPHS / "hybrid.yaml")


def with_nodes(plan, **changes) -> dict:
    """The hybrid graph as data, with some node fields changed."""
    data = plan.spec.sections()
    for node_id, fields in changes.items():
        data["nodes"][node_id] = data["nodes"][node_id] | fields
    return data


def test_one_deployment_per_node_in_topological_order(hybrid):
    compiled = compile_plan(hybrid, fuse="none")
    assert [u.name for u in compiled.units] == ["fit", "depth", "control", "generate", "upscale"]
    by_name = {u.name: u for u in compiled.units}
    assert by_name["fit"].graph_inputs == ("image",) and by_name["fit"].upstream == ()
    assert by_name["generate"].graph_inputs == ("prompt",) and by_name["generate"].upstream == ("control",)
    assert [str(s) for s in by_name["depth"].exports] == ["depth.depth_map"]
    assert compiled.awaited == ("upscale",)


def test_the_planner_fuses_by_default(hybrid):
    (unit,) = compile_plan(hybrid).units
    assert unit.name == "generate" and unit.nodes == tuple(hybrid.nodes)
    assert (
        unit.graph_inputs == ("image", "prompt")
        and unit.upstream == ()
        and [str(s) for s in unit.exports] == ["upscale.image"]
    )


def test_resources_batching_and_ongoing_requests(hybrid):
    data = with_nodes(
        hybrid,
        depth={"resources": {"gpu": 0.1}, "batch": {"max_size": 8, "wait_ms": 10}},
        generate={"resources": {"gpu": 0.6}, "batch": {"max_size": 4, "wait_ms": 20}},
        upscale={"resources": {"gpu": 0.2}, "batch": {"max_size": 4, "wait_ms": 10}},
    )
    units = {u.name: u for u in compile_plan(plan_from_data(data)).units}
    assert list(units) == ["fit", "depth", "control", "generate", "upscale"]  # own resources: apart
    assert [units[n].num_gpus for n in ("fit", "depth", "control", "generate", "upscale")] == [0, 0.1, 0, 0.6, 0.2]
    generate = units["generate"].deployment_options()
    assert generate["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.6}
    assert generate["num_replicas"] == 1 and generate["max_ongoing_requests"] == 16  # four batches of 4
    assert (units["depth"].max_batch_size, units["depth"].batch_wait_s) == (8, 0.01)
    assert (units["generate"].max_batch_size, units["generate"].batch_wait_s) == (4, 0.02)
    assert units["fit"].max_batch_size == 32  # the family's default, no batch section
    assert all(u.max_batch_size == 1 for u in compile_plan(hybrid, batching=False, fuse="none").units)


def test_groups_fuse_nodes_into_one_deployment(hybrid):
    data = with_nodes(
        hybrid,
        fit={"group": "vision"},
        depth={"group": "vision", "resources": {"gpu": 0.1}},
        control={"group": "vision"},
    )
    compiled = compile_plan(plan_from_data(data), fuse="groups")
    assert [(u.name, u.nodes) for u in compiled.units] == [
        ("vision", ("fit", "depth", "control")),
        ("generate", ("generate",)),
        ("upscale", ("upscale",)),
    ]
    vision = compiled.unit("vision")
    assert vision.num_gpus == 0.1 and [str(s) for s in vision.exports] == ["control.image"]
    assert vision.max_batch_size == 8  # the tightest member's family limit
    assert [u.name for u in compile_plan(plan_from_data(data), fuse="none").units] == list(hybrid.nodes)


def test_fully_fused(hybrid):
    (unit,) = compile_plan(hybrid, fuse="all", weight_bytes=lambda node: 0).units
    assert unit.name == "hybrid_depth_sdxl" and unit.nodes == tuple(hybrid.nodes)
    assert unit.num_gpus == pytest.approx(0.15) and unit.graph_inputs == ("image", "prompt") and unit.upstream == ()


def test_a_group_around_an_outside_node_is_refused(hybrid):
    data = with_nodes(hybrid, depth={"group": "g"}, generate={"group": "g"})  # control sits between them
    with pytest.raises(GraphInvalid) as err:
        compile_plan(plan_from_data(data))
    assert err.value.errors[0].code == "group_cycle"
    assert "g -> control -> g" in str(err.value) and "move that node into group 'g'" in str(err.value)


def test_autoscaling_replicas(hybrid):
    data = with_nodes(hybrid, generate={"replicas": {"min": 1, "max": 4, "target_ongoing_requests": 3}})
    compiled = compile_plan(plan_from_data(data))
    assert compiled.unit("generate").nodes == ("generate",)  # scaling on its own: apart
    options = compiled.unit("generate").deployment_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 3.0,
        "upscale_delay_s": 10.0,
        "downscale_delay_s": 120.0,
        "look_back_period_s": 30.0,
    }


def test_autoscaling_waits_for_a_batch_to_fill_before_adding_a_replica(hybrid):
    """Ray's default target of 2 ongoing requests would add a replica before a batch of 8
    could fill: unset, the target is two batches (one running, one filling)."""
    data = with_nodes(
        hybrid,
        generate={"replicas": {"min": 1, "max": 3, "downscale_delay_s": 5}, "batch": {"max_size": 8, "wait_ms": 20}},
    )
    unit = compile_plan(plan_from_data(data)).unit("generate")
    config = unit.deployment_options()["autoscaling_config"]
    assert config["target_ongoing_requests"] == 16.0 and config["downscale_delay_s"] == 5.0
    assert unit.max_ongoing_requests > config["target_ongoing_requests"]  # else it could never scale out
    assert any("autoscaling 1..3 replicas at 16 frames a replica (2 batches of 8" in why for why in unit.why)


def test_gpu_fraction_rule():
    assert gpu_fraction(0, 80) == 0.05
    assert gpu_fraction(int(8.79 * GIB), 80) == 0.25  # SDXL + a full ControlNet in fp16 on an 80 GB GPU
    assert gpu_fraction(int(0.046 * GIB), 24) == 0.05  # Depth Anything V2 Small
    assert gpu_fraction(10 * GIB, 24) == 0.9
    assert gpu_fraction(40 * GIB, 24) == 1.0


def test_unset_fractions_come_from_weight_bytes(hybrid):
    sizes = {"depth": GIB, "generate": None, "upscale": 0}
    compiled = compile_plan(hybrid, fuse="none", weight_bytes=lambda node: sizes[node.id], gpu_memory_gib=24)
    assert compiled.unit("depth").num_gpus == 0.15  # (2 GiB + 1 GiB) / 24 GiB, rounded up to 0.05
    assert "1.00 GiB of weights on a 24 GiB GPU" in compiled.unit("depth").gpu_note
    assert compiled.unit("generate").num_gpus == 0.25
    assert any("'generate': weight files not found" in w for w in compiled.warnings)
    assert compiled.unit("fit").num_gpus == 0  # no model: never a GPU unless asked
    (fused,) = compile_plan(hybrid, weight_bytes=lambda node: sizes[node.id], gpu_memory_gib=24).units
    assert fused.num_gpus == pytest.approx(0.15 + 0.25 + 0.05)  # a fused unit asks for the sum
