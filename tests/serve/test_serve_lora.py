"""LoRA adapters served on Ray with tiny models: concurrent requests over several adapter
sets share batches, and each frame still gets exactly its solo image; a request naming an
adapter the graph does not allow gets a 4xx naming the field."""

import concurrent.futures
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.support import decode_b64_png, wait_health

pytestmark = pytest.mark.slow

GRAPH = str(Path(__file__).resolve().parents[1] / "livepeer" / "graphs" / "t2i_lora_tiny.yaml")
ROUTE = "/v1/sdxl-t2i-lora"
SETS = [{}, {"nerijs/pixel-art-xl": 1.2}, {"nerijs/pixel-art-xl": 0.5, "latent-consistency/lcm-lora-sdxl": 1.0}]


@pytest.fixture(scope="module")
def served(serve_url: str):
    from ray import serve

    from capgraph.serve.app import CapabilityArgs, build

    serve.run(build(CapabilityArgs(graph=GRAPH, fuse="none")), name="lora", route_prefix="/lora")
    wait_health(serve_url + "/lora", 60)
    yield serve_url + "/lora"
    serve.delete("lora")


def ask(url: str, loras: dict, seed: int) -> httpx.Response:
    body = {"inputs": {"prompt": "a red cube"}, "params": {"generate.seed": seed, "style": loras}}
    return httpx.post(url + ROUTE, json=body, timeout=120)


def image(answer: httpx.Response) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    return decode_b64_png(answer.json()["outputs"]["image"]).astype(int)


def test_concurrent_requests_over_three_adapter_sets_each_get_their_solo_image(served: str) -> None:
    jobs = [(SETS[i % 3], i % 2) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: image(ask(served, *job)), jobs))
    for job, got in zip(jobs, together):
        alone = image(ask(served, *job))
        assert np.abs(got - alone).max() <= 2  # batched matmuls may round differently
    by_set = [together[0], together[1], together[2]]  # seed 0, 1, 0 over the three sets
    assert np.abs(by_set[0] - together[6]).max() <= 2 and np.abs(by_set[0] - by_set[2]).max() > 5


def test_a_path_or_an_adapter_not_allowed_is_a_4xx_naming_the_field(served: str) -> None:
    for loras in ({"/etc/passwd": 1.0}, {"someone/other-lora": 1.0}):
        answer = ask(served, loras, 0)
        assert 400 <= answer.status_code < 500, answer.text
        assert "params.style" in answer.text and "not one this graph allows" in answer.text
