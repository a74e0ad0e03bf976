"""The planner's choices on graphs with declared costs: fusion, batch and wait, CPUs,
replicas and threads, and which settings win. No Ray, no models, no timing."""

import pytest

from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.serve.compile.compiler import compile_plan
from capgraph.serve.compile.planner import (
    MAX_WAIT_MS,
    Cost,
    Machine,
    declared_cost,
    machine_for,
    node_settings,
    place,
    threads_for,
)
from tests.conftest import GRAPHS

GIB = 1 << 30
LAPTOP = Machine(cpus=1.75, gpus=False, memory_bytes=16 * GIB)
"""A 2-core machine without a GPU, less the ingress's 0.25 CPU."""
GPU_BOX = Machine(cpus=15.75, gpus=True, memory_bytes=64 * GIB)


@pytest.fixture(scope="module")
def hybrid():
    return load_plan(GRAPHS / "hybrid.yaml")


def chain(*nodes: tuple[str, str, dict]) -> dict:
    """A graph of resize/depth/depth_control/... nodes in a line, each reading the one before."""
    data = {"capability": "chain", "inputs": {"image": "image"}, "nodes": {}, "outputs": {}}
    previous = "image"
    for node_id, family, fields in nodes:
        port = "depth" if family == "depth_control" else "image"
        data["nodes"][node_id] = {"type": family, "inputs": {port: previous}} | fields
        previous = f"{node_id}.{'depth_map' if family == 'depth' else 'image'}"
    data["outputs"]["out"] = previous
    return data


def costs(plan, **ms: float | dict) -> dict[str, Cost]:
    """Declared per-frame costs by node id (a dict of batch -> ms means measured)."""
    result = {n: declared_cost(node) for n, node in plan.nodes.items()}
    for node_id, value in ms.items():
        result[node_id] = Cost(value, "measured") if isinstance(value, dict) else Cost({1: value}, "declared")
    return result


def groups(plan, cost, fuse="auto", tuned=None):
    return [p.nodes for p in place(plan, node_settings(plan, tuned), cost, fuse)]


# -- fusion --------------------------------------------------------------------------------


def test_cheap_nodes_fuse_with_the_bottleneck(hybrid):
    assert groups(hybrid, costs(hybrid)) == [("fit", "depth", "control", "generate", "upscale")]
    (unit,) = compile_plan(hybrid).units
    assert unit.name == "generate"
    assert "fit, depth, control, upscale fused with generate" in unit.why[0] and "(declared)" in unit.why[0]


def test_a_node_near_the_bottleneck_gets_its_own_deployment(hybrid):
    cost = costs(hybrid, generate=100.0, upscale=60.0)  # upscale is 60 % of generate: pipelining them pays
    assert groups(hybrid, cost) == [("fit", "depth", "control", "generate"), ("upscale",)]
    cost = costs(hybrid, depth=80.0, generate=100.0)  # heavy depth anchors what comes before generate
    assert groups(hybrid, cost) == [("fit", "depth", "control"), ("generate", "upscale")]


def test_fuse_modes(hybrid):
    cost = costs(hybrid)
    assert groups(hybrid, cost, "none") == [(n,) for n in hybrid.nodes]
    assert groups(hybrid, cost, "groups") == [(n,) for n in hybrid.nodes]
    assert groups(hybrid, cost, "all") == [tuple(hybrid.nodes)]


def test_own_resources_or_replicas_keep_a_node_apart():
    plan = plan_from_data(
        chain(
            ("fit", "resize", {}),
            ("depth", "depth", {"resources": {"gpu": 0.3}}),
            ("control", "depth_control", {}),
            ("more", "resize", {"replicas": 3}),
        )
    )
    cost = costs(plan, fit=1.0, depth=10.0, control=1.0, more=1.0)
    assert groups(plan, cost) == [("fit",), ("depth",), ("control",), ("more",)]
    why = {p.name: p.why for p in place(plan, node_settings(plan), cost)}
    assert why["depth"] == "its own deployment: it sets its own resources (graph)"
    assert why["more"] == "its own deployment: it sets its own replicas (graph)"


def test_written_groups_stay_as_written_and_the_rest_is_planned(hybrid):
    data = hybrid.spec.sections()
    data["nodes"]["fit"]["group"] = data["nodes"]["depth"]["group"] = "vision"
    plan = plan_from_data(data)
    assert groups(plan, costs(plan)) == [("fit", "depth"), ("control", "generate", "upscale")]
    units = compile_plan(plan).units
    assert [u.name for u in units] == ["vision", "generate"] and units[0].why[0] == "group 'vision' (graph)"


def test_pinned_nodes_split_runs_so_deployments_never_form_a_cycle():
    """A diamond: a and d are cheap and free, b is pinned in the middle; fusing a with d
    around b would make two deployments read each other."""
    data = {
        "capability": "diamond",
        "inputs": {"image": "image", "mask": "mask"},
        "outputs": {"out": "d.image"},
        "nodes": {
            "a": {"type": "resize", "inputs": {"image": "image"}},
            "b": {"type": "resize", "inputs": {"image": "a.image"}, "resources": {"cpu": 1}},
            "c": {"type": "resize", "inputs": {"image": "a.image"}},
            "d": {"type": "composite", "inputs": {"foreground": "b.image", "background": "c.image", "mask": "mask"}},
        },
    }
    plan = plan_from_data(data)
    assert groups(plan, costs(plan)) == [("a",), ("b",), ("c", "d")]
    assert [u.name for u in compile_plan(plan).units] == ["a", "b", "c"]  # named after its costliest node, c == d


def test_tuned_settings_apply_where_the_graph_is_silent(hybrid):
    data = hybrid.spec.sections()
    data["nodes"]["upscale"]["batch"] = {"max_size": 2, "wait_ms": 3}
    plan = plan_from_data(data)
    tuned = {n: {"group": "all_of_it", "batch": {"max_size": 16, "wait_ms": 1}} for n in plan.nodes}
    settings = node_settings(plan, tuned)
    assert settings["fit"].source == {"group": "tuned", "batch": "tuned"}
    assert settings["upscale"].batch.max_size == 2 and settings["upscale"].source["batch"] == "graph"
    (unit,) = compile_plan(plan, tuned=tuned, machine=LAPTOP).units
    assert unit.name == "all_of_it" and unit.max_batch_size == 16  # generate's, the costliest node's
    assert unit.chunks == (("upscale", 2),)  # the graph's own batch wins over the tuned one: at most 2 a call
    assert unit.why[0] == "group 'all_of_it' (tuned)"
    assert unit.why[1] == "batch 16, generate's (tuned); upscale in chunks of 2; wait 3 ms (graph and tuned)"


# -- batch and wait ------------------------------------------------------------------------


def test_declared_costs_batch_at_the_tightest_family_limit(hybrid):
    (unit,) = compile_plan(hybrid).units
    assert unit.max_batch_size == 4  # sdxl and upscale declare 4
    assert unit.batch_wait_s == 0.0 and "independent callers" in unit.why[1]
    assert unit.max_ongoing_requests == 16


def test_measured_costs_batch_at_the_smallest_size_near_the_best(hybrid):
    light = {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0}
    generate = {1: 100.0, 2: 120.0, 4: 160.0, 8: 300.0, 16: 600.0}  # 40 ms a frame at 4, 37.5 at 8 and 16
    measured = {n: Cost(light, "measured") for n in hybrid.nodes} | {"generate": Cost(generate, "measured")}
    (unit,) = compile_plan(hybrid, measured=measured).units
    assert unit.max_batch_size == 8  # a frame costs 44 ms at 4, 41.5 at 8 and 16: 8 is the first within 5 % of the best
    assert "within 5% of the best measured" in unit.why[1]
    assert unit.max_ongoing_requests == 32


def test_each_node_runs_the_batch_in_chunks_of_its_own_best_size(hybrid):
    """An upscaler fastest at 2 frames a call, fused with a generator best at 16."""
    light = {b: b * 0.1 for b in (1, 2, 4, 8, 16)}
    measured = {n: Cost(light, "measured") for n in hybrid.nodes} | {
        "generate": Cost({1: 60.0, 2: 64.0, 4: 90.0, 8: 130.0, 16: 165.0}, "measured"),
        "upscale": Cost({1: 21.0, 2: 38.0, 4: 83.0, 8: 222.0, 16: 440.0}, "measured"),
    }
    (unit,) = compile_plan(hybrid, measured=measured).units
    assert unit.max_batch_size == 16 and unit.chunks == (("upscale", 2),)
    assert "upscale in chunks of 2" in unit.why[1]
    unchunked = sum(c.ms(16) for c in measured.values()) / 16
    assert "29.6 ms a frame" in unit.why[1] and unchunked > 38  # eight calls of 2 frames beat one of 16


def test_a_downstream_deployment_waits_a_little_for_its_upstream_batch(hybrid):
    units = {u.name: u for u in compile_plan(hybrid, fuse="none").units}
    assert units["fit"].batch_wait_s == 0.0
    assert units["generate"].batch_wait_s == pytest.approx(0.006)  # 5 % of its declared 120 ms
    assert units["upscale"].batch_wait_s == pytest.approx(0.00175, abs=1e-4)
    unit = compile_plan(hybrid, fuse="none", measured={"generate": Cost({1: 1000.0, 2: 2000.0}, "measured")}).unit(
        "generate"
    )
    assert unit.batch_wait_s == MAX_WAIT_MS / 1000


def test_written_batch_wins_and_batching_off_runs_alone(hybrid):
    data = hybrid.spec.sections()
    data["nodes"]["generate"]["batch"] = {"max_size": 2, "wait_ms": 25}
    (unit,) = compile_plan(plan_from_data(data)).units
    assert (unit.max_batch_size, unit.batch_wait_s, unit.max_ongoing_requests) == (2, 0.025, 8)
    assert unit.why[1] == "batch 2, generate's (graph); wait 25 ms (graph)"
    (unit,) = compile_plan(hybrid, batching=False).units
    assert (unit.max_batch_size, unit.batch_wait_s) == (1, 0.0)


# -- CPUs, replicas, threads ---------------------------------------------------------------


def test_cpu_machine_splits_its_share_into_one_thread_replicas(hybrid):
    (unit,) = compile_plan(hybrid, machine=LAPTOP, weight_bytes=lambda node: 10 << 20).units
    assert (unit.replicas, unit.num_cpus, unit.threads) == (2, 0.75, 1)
    assert "2 replicas of about 0.88 CPU" in unit.why[-1]
    options = unit.deployment_options()
    assert options["num_replicas"] == 2 and options["ray_actor_options"] == {"num_cpus": 0.75, "num_gpus": 0.15}


def test_cpu_replicas_are_bounded_by_memory_and_known_weights(hybrid):
    small = Machine(cpus=3.75, gpus=False, memory_bytes=8 * GIB)
    (unit,) = compile_plan(hybrid, machine=small, weight_bytes=lambda node: GIB).units  # 3 GiB of weights, twice over
    assert unit.replicas == 1 and unit.threads == 4 and "(memory holds 0)" in unit.why[-1]
    (unit,) = compile_plan(hybrid, machine=small, weight_bytes=lambda node: GIB // 4).units
    assert unit.replicas == 2 and "(memory holds 2)" in unit.why[-1]
    (unit,) = compile_plan(hybrid, machine=small, weight_bytes=lambda node: None).units
    assert (
        unit.replicas == 1 and unit.threads == 4 and "weights' size or the machine's memory is unknown" in unit.why[-1]
    )


def test_gpu_deployment_keeps_one_replica_and_a_few_cpus(hybrid):
    (unit,) = compile_plan(hybrid, machine=GPU_BOX, weight_bytes=lambda node: GIB).units
    assert (unit.replicas, unit.num_cpus, unit.threads) == (1, 2.0, 2)
    assert unit.num_gpus == pytest.approx(0.45)  # 3 x (2 GiB + 1 GiB) / 24 GiB, each rounded up to 0.05


def test_shares_follow_cost_and_fit_the_machine(hybrid):
    units = compile_plan(hybrid, fuse="none", machine=LAPTOP).units
    assert sum(u.num_cpus * u.replicas for u in units) <= LAPTOP.cpus
    by_name = {u.name: u for u in units}
    assert by_name["generate"].num_cpus > by_name["depth"].num_cpus >= by_name["fit"].num_cpus == 0.25


def test_written_cpus_and_unknown_clusters(hybrid):
    data = hybrid.spec.sections()
    data["nodes"]["generate"]["resources"] = {"cpu": 3}
    units = {u.name: u for u in compile_plan(plan_from_data(data), machine=GPU_BOX).units}
    assert (units["generate"].num_cpus, units["generate"].threads) == (3, 3)
    assert units["generate"].why[-1] == "3 CPU as written, 3 torch threads"
    (unit,) = compile_plan(hybrid).units
    assert (unit.num_cpus, unit.threads, unit.replicas) == (0.25, 1, 1) and "cluster unknown" in unit.why[-1]


def test_threads_from_a_cpu_share():
    assert [threads_for(c) for c in (0.25, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 3.75)] == [1, 1, 1, 1, 2, 2, 2, 4]


def test_machine_view_of_a_cluster():
    assert machine_for([(2.0, GIB), (8.0, 4 * GIB)], 0, 0.25) == Machine(7.75, False, 4 * GIB)
    assert machine_for([], 1, 0.25).gpus


def test_cost_interpolates_and_extrapolates():
    cost = Cost({1: 10.0, 4: 16.0}, "measured")
    assert cost.ms(2) == pytest.approx(12.0) and cost.ms(8) == pytest.approx(32.0) and cost.per_frame(4) == 4.0
    assert Cost({2: 10.0}).ms(1) == 5.0
