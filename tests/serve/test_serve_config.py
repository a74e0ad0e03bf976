"""Every graph file is a Ray Serve config whose application carries that very graph, and the
builder takes it the way `serve run` hands it over. No Ray cluster is started."""

import pytest
import yaml
from pydantic import ValidationError
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from capgraph.engine.spec import GRAPH_KEYS
from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.engine.yamlload import load_yaml
from capgraph.serve.app import build
from capgraph.serve.compile.config_check import BUILDER, check_applications, with_applications
from tests.conftest import BAD_GRAPHS, GRAPHS, ROOT

GRAPH_FILES = sorted(GRAPHS.glob("*.yaml"))


@pytest.mark.parametrize("path", GRAPH_FILES, ids=[p.name for p in GRAPH_FILES])
def test_graph_file_is_a_serve_config_of_itself(path):
    text = path.read_text()
    config = ServeDeploySchema.model_validate(yaml.safe_load(text))  # what `serve run FILE` does first
    (app,) = config.applications
    assert app.import_path == BUILDER and app.route_prefix == "/"
    plan = load_plan(path)
    assert app.name == plan.capability
    assert plan_from_data(app.args["graph"]).spec == plan.spec
    assert check_applications(load_yaml(text), str(path)) == []


def test_a_drifted_copy_is_reported():
    text = (GRAPHS / "edges.yaml").read_text().replace("graph: {capability: *capability,", "graph: {capability: other,")
    (problem,) = check_applications(load_yaml(text), "edges.yaml")
    assert (
        problem.code == "args_drift"
        and problem.line
        == text.splitlines().index(next(line for line in text.splitlines() if "graph: {capability: other" in line)) + 1
    )
    assert "'capability' differs" in str(problem) and "alias it ('capability: *capability')" in str(problem)


def test_with_applications_is_idempotent_and_carries_livepeer():
    text = (
        "capability: x-y\ninputs:\n  image: image\nnodes:\n  fit: {type: resize, inputs: {image: image}}\n"
        "outputs: {image: fit.image}\nlivepeer: {capacity: 2}\n"
    )
    once = with_applications(text)
    assert with_applications(once) == once
    tree = yaml.safe_load(once)
    args = tree["applications"][0]["args"]
    assert args["graph"] == {k: tree[k] for k in GRAPH_KEYS if k in tree} and args["livepeer"] == {"capacity": 2}
    assert check_applications(load_yaml(once)) == []


def test_builder_takes_serve_run_arguments():
    """`serve run capgraph.serve.app:build graph=FILE` hands the builder strings; Ray validates them
    into CapabilityArgs through the annotation."""
    app = call_user_app_builder_with_args_if_necessary(
        build, {"graph": str(GRAPHS / "edges.yaml"), "fuse": "all", "batching": "false"}
    )
    assert isinstance(app, Application)
    with pytest.raises(ValidationError):
        call_user_app_builder_with_args_if_necessary(build, {"graph": str(GRAPHS / "edges.yaml"), "fuze": "all"})


def test_builder_exits_2_with_the_validation_message(capsys: pytest.CaptureFixture[str]):
    bad = BAD_GRAPHS / "bad_unknown_type.yaml"
    with pytest.raises(SystemExit) as exit_:
        call_user_app_builder_with_args_if_necessary(build, {"graph": str(bad.relative_to(ROOT))})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert (
        "tests/graphs/bad_unknown_type.yaml:" in err and "unknown node type" in err and err.rstrip().endswith("found.")
    )


def test_replicas_get_rays_own_settings_for_capgraph_and_a_value_set_by_the_user_wins():
    """Every capgraph replica sends frames up to 1 MiB inside the call's message
    (`serve.cluster.environment.SERVE_SETTINGS`); a user who sets it where the application
    is built keeps their value."""
    from capgraph.serve.cluster.environment import with_forwarded

    env = with_forwarded({"num_cpus": 1}, {})["runtime_env"]["env_vars"]
    assert env == {"RAY_max_direct_call_object_size": str(1 << 20)}
    mine = with_forwarded({}, {"RAY_max_direct_call_object_size": "204800", "HF_HUB_OFFLINE": "1"})
    assert mine["runtime_env"]["env_vars"] == {"RAY_max_direct_call_object_size": "204800", "HF_HUB_OFFLINE": "1"}
