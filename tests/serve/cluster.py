"""One small Ray cluster for the Serve tests: 2 CPUs, a faked GPU, no dashboard.

The faked GPU (`num_gpus=1`) lets fractional packing be checked for real: replicas that ask
for 0.25 GPU are scheduled by Ray as on a GPU machine, then run on the CPU (torch sees no
CUDA). Every replica runs on the tiny models, offline.

A pytest plug-in of the repository's conftest.py, so that there is one for the session,
shared by tests/serve and the plug-ins' served tests (plugins/*/tests).
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.serve.support import free_port

TINY_ENV = {
    "CAPGRAPH_MODELS": "tiny",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass(frozen=True)
class Cluster:
    url: str
    """Serve's HTTP proxy."""
    metrics_url: str
    """Ray's Prometheus endpoint, where the replicas' custom metrics appear."""


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A running Serve instance (apps are deployed by the tests)."""
    import ray
    from ray import serve

    env = TINY_ENV | {"CAPGRAPH_TINY_DIR": os.environ["CAPGRAPH_TINY_DIR"]}
    port, metrics_port = free_port(), free_port()
    if ray.is_initialized():  # another test package's cluster (tests/reliability) is still up: this one needs its own
        serve.shutdown()
        ray.shutdown()
    ray.init(
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        namespace="serve",
        log_to_driver=False,
        runtime_env={"env_vars": env},
        _metrics_export_port=metrics_port,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield Cluster(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(cluster: Cluster) -> str:
    return cluster.url
