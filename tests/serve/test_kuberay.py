"""`capgraph kuberay`: the RayService manifest a user applies with kubectl, checked against
KubeRay's own RayService CRD (../shared/kuberay/, KubeRay v1.7.0) the way a Kubernetes API
server checks it, and against Ray's own Serve config schema and app builder loader. No
Kubernetes and no Ray cluster here: the manifest is data."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from capgraph.engine.errors import GraphInvalid
from capgraph.engine.yamlload import load_yaml, plain
from capgraph.serve.app import build
from capgraph.serve.operate.kuberay import Shape, memory_bytes, rayservice
from tests.conftest import GRAPHS, ROOT

KUBERAY = ROOT.parent / "shared" / "kuberay"
CRD = KUBERAY / "ray.io_rayservices.yaml"
SAMPLE = KUBERAY / "ray-service.stable-diffusion.sample.yaml"
IMAGE = "registry.example/capgraph:0.1.0"
ENVIRON = {
    "CAPGRAPH_MODELS": "tiny",
    "HF_HUB_OFFLINE": "1",
    "CAPGRAPH_AUTH_TOKEN": "tok-never-inline-71c3",
    "LIVEPEER_ORCH_SECRET": "orch-never-inline-0e9d",
    "PATH": "/usr/bin",
}
needs_crd = pytest.mark.skipif(
    not CRD.exists(),
    reason=f"KubeRay's RayService CRD is not at {CRD} (the shared folder "
    "beside the repository): the schema checks are skipped",
)


def closed(schema: Any) -> Any:
    """The CRD's schema with every object closed to fields it does not declare. An API
    server prunes unknown fields without a word, so a misspelled field would vanish from
    the applied RayService; here it is an error instead."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = closed(v1["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def problems(validator, resource: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(resource)]


def manifest(graph: Path, **options: Any) -> dict[str, Any]:
    """The manifest as kubectl would read it: through its YAML text."""
    return yaml.safe_load(rayservice(graph, IMAGE, environ=ENVIRON, **options).to_yaml())


def groups(resource: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cluster = resource["spec"]["rayClusterConfig"]
    return cluster["headGroupSpec"], cluster["workerGroupSpecs"]


def container(group: dict[str, Any]) -> dict[str, Any]:
    (only,) = group["template"]["spec"]["containers"]
    return only


@needs_crd
def test_the_gpu_sample_passes_the_closed_schema(validator):
    """The check itself: KubeRay's own sample passes, a misspelled field does not."""
    sample = yaml.safe_load(SAMPLE.read_text())
    assert problems(validator, sample) == []
    sample["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1
    assert any("minReplica" in p for p in problems(validator, sample))


@needs_crd
@pytest.mark.parametrize("name", ["depth.yaml", "hybrid.yaml"])
def test_manifest_is_a_valid_rayservice_shaped_like_kuberays_gpu_sample(validator, name):
    resource = manifest(GRAPHS / name)
    assert problems(validator, resource) == []
    sample = yaml.safe_load(SAMPLE.read_text())
    assert (resource["apiVersion"], resource["kind"]) == (sample["apiVersion"], sample["kind"])
    head, (workers,) = groups(resource)
    (sample_workers,) = groups(sample)[1]
    assert container(head)["name"] == container(groups(sample)[0])["name"] == "ray-head"
    assert container(workers)["name"] == container(sample_workers)["name"] == "ray-worker"
    assert container(workers)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in str(container(head)["resources"])
    assert container(head)["image"] == container(workers)["image"] == IMAGE
    import ray

    assert resource["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__  # the image must carry this Ray


@pytest.mark.parametrize("name", ["depth.yaml", "hybrid.yaml"])
def test_serve_config_is_the_files_own_application_plus_the_replicas_settings(name):
    resource = manifest(GRAPHS / name)
    config = yaml.safe_load(resource["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)  # what the dashboard checks when KubeRay submits it
    (app,) = config["applications"]
    (entry,) = plain(load_yaml((GRAPHS / name).read_text()))["applications"]
    env = app.pop("runtime_env")["env_vars"]
    planned = app["args"].pop("machines")  # the workers to come, which the builder plans for
    assert planned and all(m["gpus"] == 1 and m["cpus"] == 8 for m in planned)
    assert app == entry
    assert env == {"CAPGRAPH_MODELS": "tiny", "HF_HUB_OFFLINE": "1"}  # not PATH; secrets elsewhere
    # `serve deploy`: Ray validates the args into the builder's annotation and calls it.
    assert isinstance(call_user_app_builder_with_args_if_necessary(build, app["args"]), Application)


def test_gpu_memory_given_for_the_plan_goes_to_the_clusters_builder_too():
    """Unset GPU fractions come from the GPU's memory: the cluster's builder must size them
    as the manifest's plan did."""
    config = yaml.safe_load(manifest(GRAPHS / "hybrid.yaml", gpu_memory_gib=80)["spec"]["serveConfigV2"])
    assert config["applications"][0]["args"]["gpu_memory_gib"] == 80
    with pytest.raises(ValueError, match="'Hybrid_1' is not a RayService name"):
        rayservice(GRAPHS / "hybrid.yaml", IMAGE, name="Hybrid_1", environ={})


def test_secrets_come_from_a_kubernetes_secret_never_inline():
    made = rayservice(GRAPHS / "depth.yaml", IMAGE, environ=ENVIRON)
    text = made.to_yaml()
    assert "tok-never-inline" not in text and "orch-never-inline" not in text
    head, (workers,) = groups(yaml.safe_load(text))
    for group in (head, workers):  # the builder runs on the head, the replicas on the workers
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(group)["env"]}
        assert refs == {k: {"name": "depth-secrets", "key": k} for k in ("CAPGRAPH_AUTH_TOKEN", "LIVEPEER_ORCH_SECRET")}
    assert made.secrets == ("CAPGRAPH_AUTH_TOKEN", "LIVEPEER_ORCH_SECRET") and made.secret_name == "depth-secrets"


def test_replicas_stay_off_the_head_and_workers_are_ready_on_health():
    resource = manifest(GRAPHS / "depth.yaml")
    head, (workers,) = groups(resource)
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "readinessProbe" not in container(head)  # KubeRay submits the app only once the head is ready
    probe = container(workers)["readinessProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": 8000}
    assert {"containerPort": 8000, "name": "serve"} in container(workers)["ports"]
    assert resource["spec"]["excludeHeadPodFromServeSvc"] is True


def test_workers_are_sized_from_the_plan_machine_by_machine(tmp_path):
    """Two 0.6 GPU replicas need two one-GPU machines; five need five: the autoscaler may
    add three. With two GPUs a machine, three machines hold five."""
    text = (
        (GRAPHS / "depth.yaml")
        .read_text()
        .replace("resources: {gpu: 0.25}", "resources: {gpu: 0.6}\n    replicas: {min: 2, max: 5}")
    )
    graph = tmp_path / "depth.yaml"
    graph.write_text(text)
    resource = manifest(graph)
    (workers,) = groups(resource)[1]
    assert (workers["minReplicas"], workers["replicas"], workers["maxReplicas"]) == (2, 2, 5)
    assert resource["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    (workers,) = groups(manifest(graph, worker=Shape(cpus=16, memory="64Gi", gpus=2)))[1]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 3)
    assert container(workers)["resources"]["limits"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "2"}
    # A fixed replica count needs no autoscaler.
    assert manifest(GRAPHS / "depth.yaml")["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is False


def test_a_cpu_only_graph_gets_a_cpu_worker_group():
    resource = manifest(GRAPHS / "edges.yaml")
    (workers,) = groups(resource)[1]
    assert workers["groupName"] == "cpu-workers"
    assert "nvidia.com/gpu" not in yaml.safe_dump(resource)


def test_a_replica_no_worker_can_hold_is_named(tmp_path):
    graph = tmp_path / "depth.yaml"
    graph.write_text((GRAPHS / "depth.yaml").read_text().replace("resources: {gpu: 0.25}", "resources: {gpu: 2}"))
    with pytest.raises(GraphInvalid) as caught:
        rayservice(graph, IMAGE, environ={})
    message = caught.value.render()
    assert "deployment 'depth' needs 2 GPU" in message and "worker machines with 1 GPU" in message


def test_the_files_own_runtime_env_wins_and_bad_args_are_named(tmp_path):
    graph = tmp_path / "depth.yaml"
    text = (GRAPHS / "depth.yaml").read_text()
    graph.write_text(
        text.replace("    import_path:", "    runtime_env: {env_vars: {CAPGRAPH_MODELS: random}}\n    import_path:")
    )
    config = yaml.safe_load(manifest(graph)["spec"]["serveConfigV2"])
    assert config["applications"][0]["runtime_env"]["env_vars"] == {"CAPGRAPH_MODELS": "random", "HF_HUB_OFFLINE": "1"}
    graph.write_text(text.replace("      graph: {", "      fuze: all\n      graph: {"))
    with pytest.raises(GraphInvalid, match="applications\\[0\\].args: fuze: Extra inputs are not permitted"):
        rayservice(graph, IMAGE, environ={})


def test_memory_quantities():
    assert memory_bytes("32Gi") == 32 * 2**30 and memory_bytes("512Mi") == 512 * 2**20 and memory_bytes("8G") == 8e9
    with pytest.raises(ValueError, match="'lots' is not a memory quantity"):
        memory_bytes("lots")


def test_cli_writes_the_manifest_and_says_which_secret_to_create(tmp_path):
    out = tmp_path / "rayservice.yaml"
    env = {
        "PATH": "/usr/bin",
        "CAPGRAPH_MODELS": "tiny",
        "CAPGRAPH_AUTH_TOKEN": "tok-never-inline-71c3",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "capgraph", "kuberay", "graphs/depth.yaml", "--image", IMAGE, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "kubectl create secret generic depth-secrets --from-literal=CAPGRAPH_AUTH_TOKEN=..." in done.stderr
    assert "worker group 'gpu-workers': 1 to 1 machine of 1 GPU, 8 CPU, 32Gi" in done.stderr
    assert "tok-never-inline" not in out.read_text() + done.stderr + done.stdout
    assert yaml.safe_load(out.read_text())["kind"] == "RayService"
    bad = subprocess.run(
        [sys.executable, "-m", "capgraph", "kuberay", "graphs/depth.yaml", "--image", IMAGE, "--worker-memory", "lots"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert bad.returncode == 2 and "'lots' is not a memory quantity" in bad.stderr and "Traceback" not in bad.stderr


def test_the_clusters_builder_plans_for_the_workers_to_come_not_the_bare_head():
    """KubeRay submits serveConfigV2 once the head (no CPU, no GPU) is up: planned against
    it, every node would fall back to the CPU and the pre-flight would refuse the graph.
    The builder plans for the worker machines the manifest describes instead."""
    from capgraph.serve.app import CapabilityArgs, plan_app

    args = CapabilityArgs(
        **yaml.safe_load(manifest(GRAPHS / "hybrid.yaml")["spec"]["serveConfigV2"])["applications"][0]["args"]
    )
    blueprint = plan_app(args)  # no cluster given: the builder's own choice
    assert blueprint.cluster.source == "args" and blueprint.problems == ()
    assert any(u.num_gpus > 0 for u in blueprint.compiled.units)
