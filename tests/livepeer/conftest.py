"""Fixtures for the Livepeer tests; the servers themselves live in lp_support.py."""

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capgraph.engine.validate import load_plan
from capgraph.livepeer.local import local_app
from capgraph.livepeer.settings import load_settings, read_section
from tests.livepeer.lp_support import EDGES, FakeOrchestrator, GatedBackend, ServerThread, Service, free_port


@pytest.fixture
def orchestrator() -> Iterator[FakeOrchestrator]:
    orch = FakeOrchestrator()
    orch.start()
    yield orch
    orch.stop()


@pytest.fixture
def start_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Service]]:
    """`start_service(graph=EDGES, env={...}, hold=False, section=None)`: the graph served on
    127.0.0.1, with its own `livepeer:` section or the one given."""
    started: list[Service] = []

    def start(
        graph: Path = EDGES,
        env: dict[str, str] | None = None,
        hold: bool = False,
        port: int | None = None,
        section: dict[str, Any] | None = None,
    ) -> Service:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        port = port or free_port()
        monkeypatch.setenv("CAPGRAPH_LIVEPEER__URL", f"http://127.0.0.1:{port}")
        plan = load_plan(graph)
        section = read_section(graph) if section is None else section
        if "live" in section and importlib.util.find_spec("pytrickle") is None:
            section = {k: v for k, v in section.items() if k != "live"}  # without the livepeer extra: no stream routes
        settings = load_settings(plan, section)
        backend = GatedBackend(plan)
        if hold:
            backend.gate.clear()
        service = Service(plan, settings, backend, ServerThread(local_app(plan, settings, backend), port).start())
        started.append(service)
        return service

    yield start
    for service in started:
        service.server.stop()
