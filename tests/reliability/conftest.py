"""One Ray cluster for the reliability tests, and the apps they share.

The cluster is package-scoped, so it is gone before tests/serve starts its own. It is
declared with 4 CPUs on this 2-core machine (logical resources only) and every node here
asks for a quarter CPU, so every app of these tests can be scheduled at once. There is no
GPU: every node falls back to the CPU, as on a laptop. Every process of it sees the tiny
models, the test-only `sleepy` family (CAPGRAPH_NODES) and the secrets the security tests
look for in answers and logs.
"""

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.sleepy import FAMILY, Sleepy
from tests.reliability.support import (
    BODY_LIMIT,
    LIVEPEER,
    MAX_PIXELS,
    ORCH_SECRET,
    TOKEN,
    TOKEN_ENV,
    Cluster,
    deploy,
    hybrid_graph,
    nap_graph,
    wait_health,
)
from tests.serve.support import free_port

ENV = {
    "CAPGRAPH_MODELS": "tiny",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "CAPGRAPH_NODES": FAMILY,
}
SECRETS = {TOKEN_ENV: TOKEN, "LIVEPEER_ORCH_SECRET": ORCH_SECRET}
"""Given to the cluster as a container gives them, in the environment Ray starts from, not
in a runtime_env (which Ray itself records), so a leak found in the logs is capgraph's."""


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    import ray
    from ray import serve

    from capgraph.engine.registry import catalogue, register

    if ray.is_initialized():  # another package's cluster is still up: this one needs its own
        serve.shutdown()
        ray.shutdown()
    register(Sleepy)  # the builder validates graphs in this process; replicas read CAPGRAPH_NODES
    env = ENV | {"CAPGRAPH_TINY_DIR": os.environ["CAPGRAPH_TINY_DIR"]}
    saved = {name: os.environ.get(name) for name in SECRETS}
    os.environ.update(SECRETS)
    port = free_port()
    try:
        context = ray.init(
            address="local",
            num_cpus=4,
            num_gpus=0,
            include_dashboard=False,
            namespace="reliability",
            log_to_driver=False,
            runtime_env={"env_vars": env},
        )
    finally:
        for name, value in saved.items():  # Ray's processes have them now; this one needs them no more
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield Cluster(f"http://127.0.0.1:{port}", Path(context.address_info["session_dir"]) / "logs")
    finally:
        if ray.is_initialized():  # a later package may have replaced this cluster with its own already
            serve.shutdown()
            ray.shutdown()
        catalogue().pop(Sleepy.type, None)  # leave the catalogue as later packages expect it


@pytest.fixture(scope="package")
def hybrid(cluster: Cluster) -> str:
    """The tiny hybrid graph at `/`, one replica per node: what the fuzz, the corpus, the
    soak, the kill and the update tests load."""
    start = time.monotonic()
    deploy("hybrid", "/", hybrid_graph(), max_pixels=MAX_PIXELS, max_body_bytes=BODY_LIMIT, livepeer=LIVEPEER)
    wait_health(cluster.url, 120)
    print(f"\nhybrid graph healthy {time.monotonic() - start:.1f}s after serve.operate.run")
    return cluster.url


@pytest.fixture(scope="package")
def nap(cluster: Cluster) -> str:
    """A one-node sleepy graph at `/nap`, two replicas of the node, a 2 s request timeout."""
    deploy("nap", "/nap", nap_graph(replicas=2), request_timeout_s=2.0)
    url = cluster.url + "/nap"
    wait_health(url, 60)
    return url
