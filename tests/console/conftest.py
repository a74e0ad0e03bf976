"""One Ray cluster for the console tests, two small apps on it, and a headless Chromium.

The cluster is package-scoped, as tests/reliability's is, so it is gone before the next
package starts its own. `demo` (at /demo) runs three nodes on the tiny models, each in a
deployment of its own so one can be killed while the others serve; `locked` (at /locked)
is one weightless node with a bearer token. The browser is the distribution's Chromium
driven by Selenium; where either is missing the tests skip, naming what to install.
"""

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.reliability.support import deploy
from tests.serve.support import free_port, wait_health

ENV = {
    "CAPGRAPH_MODELS": "tiny",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}
TOKEN_ENV = "CAPGRAPH_CONSOLE_TEST_TOKEN"
TOKEN = "tok-console-8d2b71"
CPU = 0.25
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def demo_graph() -> dict[str, Any]:
    """An image, fitted, then its depth (a tiny model) and its edges: two image outputs."""
    node = {"replicas": 1, "resources": {"cpu": CPU}}
    return {
        "capability": "console-demo",
        "version": "v3",
        "description": "Depth preview and edges of a frame.",
        "inputs": {"image": {"type": "image", "description": "any picture"}},
        "nodes": {
            "fit": {"type": "resize", "params": {"max_side": 64, "multiple": 8}, "inputs": {"image": "image"}} | node,
            "depth": {"type": "depth", "inputs": {"image": "fit.image"}} | node,
            "edges": {"type": "canny", "inputs": {"image": "fit.image"}} | node,
        },
        "outputs": {"preview": "depth.preview", "edges": "edges.edges"},
    }


def locked_graph() -> dict[str, Any]:
    return {
        "capability": "locked",
        "inputs": {"image": "image"},
        "nodes": {"edges": {"type": "canny", "inputs": {"image": "image"}, "replicas": 1, "resources": {"cpu": CPU}}},
        "outputs": {"edges": "edges.edges"},
    }


@dataclass(frozen=True)
class Apps:
    demo: str
    locked: str


@pytest.fixture(scope="package")
def apps() -> Iterator[Apps]:
    import ray
    from ray import serve

    if ray.is_initialized():  # another package's cluster is still up: this one needs its own
        serve.shutdown()
        ray.shutdown()
    saved = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = TOKEN  # as a container gives it: in the environment Ray starts from
    port = free_port()
    try:
        ray.init(
            address="local",
            num_cpus=4,
            num_gpus=0,
            include_dashboard=False,
            namespace="console",
            log_to_driver=False,
            runtime_env={"env_vars": ENV | {"CAPGRAPH_TINY_DIR": os.environ["CAPGRAPH_TINY_DIR"]}},
        )
    finally:
        os.environ.pop(TOKEN_ENV) if saved is None else os.environ.__setitem__(TOKEN_ENV, saved)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        deploy("demo", "/demo", demo_graph(), fuse="none")
        deploy("locked", "/locked", locked_graph(), livepeer={"token_env": TOKEN_ENV})
        wait_health(url + "/demo", 120)
        wait_health(url + "/locked", 60)
        print(f"\nconsole apps healthy {time.monotonic() - started:.1f}s after serve.operate.run")
        yield Apps(url + "/demo", url + "/locked")
    finally:
        serve.shutdown()
        ray.shutdown()


def _which(names: tuple[str, ...]) -> str | None:
    return next((found for name in names if (found := shutil.which(name))), None)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Headless Chromium through Selenium (the distribution's chromium and chromedriver)."""
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("the console tests need Selenium: pip install -e '.[test]'")
    binary, driver = _which(BROWSERS), _which(DRIVERS)
    if binary is None or driver is None:
        pytest.skip(
            "the console tests need a headless Chromium: apt-get install chromium chromium-driver "
            f"(found browser: {binary or 'none'}, chromedriver: {driver or 'none'})"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()
