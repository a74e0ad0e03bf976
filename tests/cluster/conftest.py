"""One Ray cluster of three machines for the tests of this folder, started as an operator
starts one (`tests/cluster/raycluster.py`): a head that holds no replica (`--num-cpus=0`,
as in the KubeRay manifest) and two workers with 2 CPUs and one GPU each. The GPUs are
Ray's logical counts: torch sees none here, so the replicas Ray gives one run on the CPU.

The head was started with the tiny-model settings, as an operator would set them where
`serve deploy` builds the graph; the workers were started with none of capgraph's or
Hugging Face's settings: a replica there sees them only if they travel with the application.
Serve runs one proxy, on the head: every machine here shares one host and one port 8000
would be taken three times (`serve start --proxy-location HeadOnly`).
"""

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.cluster.raycluster import RAY, SERVE, RayCluster, clean_env
from tests.serve.support import free_port

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Served:
    cluster: RayCluster
    url: str
    """The Serve proxy on the head."""
    env: dict[str, str]
    """What a shell on the head has (`RAY_AUTH_MODE=token`, the tiny-model settings)."""


@pytest.fixture(scope="package")
def three_machines() -> Iterator[Served]:
    head_env = clean_env(
        CAPGRAPH_MODELS="tiny",
        HF_HUB_OFFLINE="1",
        CAPGRAPH_TINY_DIR=os.environ["CAPGRAPH_TINY_DIR"],
        RAY_USAGE_STATS_ENABLED="0",
    )
    subprocess.run([RAY, "get-auth-token", "--generate"], env=head_env, capture_output=True, check=True, timeout=60)
    cluster = RayCluster()
    port = free_port()
    try:
        cluster.start_head(head_env, "--num-cpus=0", "--num-gpus=0")
        for name in ("b", "c"):
            cluster.add(
                name,
                clean_env(RAY_USAGE_STATS_ENABLED="0"),
                "--num-cpus=2",
                "--num-gpus=1",
                f'--resources={{"machine_{name}": 1}}',
            )
        subprocess.run(
            [
                SERVE,
                "start",
                f"--address={cluster.address}",
                "--http-host=127.0.0.1",
                f"--http-port={port}",
                "--proxy-location=HeadOnly",
            ],
            env=head_env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield Served(cluster, f"http://127.0.0.1:{port}", head_env)
    finally:
        cluster.stop()
