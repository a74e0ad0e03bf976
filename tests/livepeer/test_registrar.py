"""Registration with a fake orchestrator on 127.0.0.1: BYOC and the Live Runner registry."""

import json
import logging
import time

import pytest

from capgraph.livepeer.registrar import parse_duration, register_graph, runners_json
from tests.livepeer.lp_support import EDGES, ORCH_SECRET, TOKEN, data_url, wait_for


def _env(orchestrator, byoc=True, runner=True) -> dict[str, str]:
    env = {
        "LIVEPEER_ORCH_SECRET": ORCH_SECRET,
        "CAPGRAPH_AUTH_TOKEN": TOKEN,
        "CAPGRAPH_LIVEPEER__PROBE_S": "0.2",
        "CAPGRAPH_LIVEPEER__BYOC__INTERVAL_S": "30",
    }
    if byoc:
        env["CAPGRAPH_LIVEPEER__BYOC__ORCHESTRATOR"] = orchestrator.url
    if runner:
        env["CAPGRAPH_LIVEPEER__RUNNER__ORCHESTRATOR"] = orchestrator.url
        env["CAPGRAPH_LIVEPEER__RUNNER__APP"] = "tests/edges-live"
    return env


def test_registers_only_once_warm_and_forwards_a_job_end_to_end(orchestrator, start_service, caplog):
    caplog.set_level(logging.DEBUG)
    service = start_service(env=_env(orchestrator), hold=True)
    # While warming: heartbeats say "loading" (hidden from discovery), BYOC stays silent.
    wait_for(lambda: len(orchestrator.state.heartbeats) >= 2)
    assert orchestrator.state.registrations == []
    assert {h["body"]["status"] for h in orchestrator.state.heartbeats} == {"loading"}
    assert orchestrator.job("edges-live", {"inputs": {}}).status_code == 503  # unknown to the orchestrator

    service.backend.gate.set()
    wait_for(lambda: orchestrator.state.capabilities.get("edges-live"))
    registration = orchestrator.state.registrations[0]
    assert registration == {
        "name": "edges-live",
        "description": "Canny edges blended over the frame.",
        "url": service.url,
        "capacity": 1,
        "price_per_unit": 0,
        "price_scaling": 1,
        "currency": "wei",
        "token": TOKEN,
    }
    wait_for(lambda: orchestrator.state.heartbeats[-1]["body"]["status"] == "ready")
    beats = orchestrator.state.heartbeats
    assert beats[0]["auth"] == "orchestrator" and all(b["auth"] == "heartbeat" for b in beats[1:])
    first = beats[-1]["body"]
    assert first["app"] == "tests/edges-live" and first["runner_url"] == service.url and first["capacity"] == 1
    assert first["price_info"] == {"price": 0.0, "currency": "usd", "unit": "hour"}

    # A job through the orchestrator, as livepeer-gateway's submit_byoc_job sends it.
    answer = orchestrator.job("edges-live", {"inputs": {"image": data_url()}, "params": {"blend.opacity": 1.0}})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["outputs"]) == {"image", "edges"}
    forwarded = orchestrator.state.forwarded[-1]
    assert forwarded["url"] == f"{service.url}/edges-live"
    assert forwarded["headers"] == {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    # A container 4xx goes back to the client as it is.
    bad = orchestrator.job("edges-live", {"inputs": {}})
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "inputs.image"

    # Secrets never reach the log.
    assert ORCH_SECRET not in caplog.text and TOKEN not in caplog.text


def test_registers_again_after_an_orchestrator_restart_and_unregisters_on_shutdown(orchestrator, start_service):
    service = start_service(env=_env(orchestrator))
    wait_for(lambda: orchestrator.state.capabilities.get("edges-live"))
    wait_for(
        lambda: orchestrator.state.runners and next(iter(orchestrator.state.runners.values())).get("status") == "ready"
    )
    old_runner = next(iter(orchestrator.state.runners))

    orchestrator.restart()  # forgets every registration and heartbeat secret
    assert orchestrator.state.capabilities == {}
    wait_for(
        lambda: orchestrator.state.capabilities.get("edges-live"), timeout=10
    )  # long before the 30 s re-registration
    wait_for(lambda: orchestrator.state.runners, timeout=10)
    new_runner = next(iter(orchestrator.state.runners))
    assert new_runner != old_runner
    # The stale heartbeat secret is refused once; the next beat, at once, uses the orchestrator secret.
    assert [h["auth"] for h in orchestrator.state.heartbeats[:2]] in (
        ["bad", "orchestrator"],
        ["orchestrator", "heartbeat"],
    )

    service.server.stop()
    assert orchestrator.state.unregistrations == ["edges-live"]
    assert orchestrator.state.capabilities == {}
    assert orchestrator.state.runner_unregistrations == [new_runner]


def test_a_dropped_capability_comes_back_with_the_next_registration(orchestrator, start_service):
    env = _env(orchestrator, runner=False) | {"CAPGRAPH_LIVEPEER__BYOC__INTERVAL_S": "1"}
    service = start_service(env=env)
    wait_for(lambda: orchestrator.state.capabilities.get("edges-live"))
    # The orchestrator drops a capability whose container answers 401 (here: a stale token).
    orchestrator.state.capabilities["edges-live"]["token"] = "stale"
    assert orchestrator.job("edges-live", {"inputs": {"image": data_url()}}).status_code == 401
    assert "edges-live" not in orchestrator.state.capabilities
    wait_for(lambda: orchestrator.state.capabilities.get("edges-live"), timeout=5)
    assert orchestrator.job("edges-live", {"inputs": {"image": data_url()}}).status_code == 200
    del service


def test_wrong_secret_is_refused_and_not_retried_in_a_tight_loop(orchestrator, start_service):
    env = _env(orchestrator, runner=False) | {"LIVEPEER_ORCH_SECRET": "wrong"}
    start_service(env=env)
    wait_for(lambda: orchestrator.state.register_attempts >= 1)
    time.sleep(1.0)
    assert orchestrator.state.capabilities == {}
    assert orchestrator.state.register_attempts == 1  # next try after byoc.interval_s (30 s)


def test_register_by_hand_prints_what_the_orchestrator_answered(orchestrator, monkeypatch):
    env = _env(orchestrator) | {"CAPGRAPH_LIVEPEER__URL": "http://10.0.0.5:8000"}
    answers = register_graph(EDGES, environ=env)
    assert [(a["kind"], a["status"]) for a in answers] == [("byoc", 200), ("runner", 200)]
    assert answers[0]["body"] == "ok"
    runner_answer = json.loads(answers[1]["body"])
    assert runner_answer["heartbeat_secret"] == "***"  # never printed
    assert orchestrator.state.capabilities["edges-live"]["url"] == "http://10.0.0.5:8000"
    assert orchestrator.state.heartbeats[0]["body"]["status"] == "ready"

    answers = register_graph(EDGES, unregister=True, environ=env)
    assert answers[0] == {"kind": "byoc", "orchestrator": orchestrator.url, "status": 200, "body": "ok"}
    assert orchestrator.state.capabilities == {}

    with pytest.raises(ValueError, match="LIVEPEER_ORCH_SECRET"):
        register_graph(EDGES, environ={k: v for k, v in env.items() if k != "LIVEPEER_ORCH_SECRET"})
    refused = register_graph(EDGES, environ=env | {"LIVEPEER_ORCH_SECRET": "wrong"})
    assert refused[0]["status"] == 400 and refused[1]["status"] == 401


def test_runners_json_is_a_static_live_runner_entry():
    env = {
        "CAPGRAPH_LIVEPEER__URL": "http://app:8000",
        "CAPGRAPH_LIVEPEER__RUNNER__APP": "myorg/edges",
        "CAPGRAPH_LIVEPEER__RUNNER__PRICE": "0.01",
    }
    config = runners_json(
        EDGES,
        existing={
            "runners": [
                {"app": "other", "runner_url": "http://x:1"},
                {"app": "myorg/edges", "runner_url": "http://app:8000"},
            ]
        },
        environ=env,
    )
    assert config["runners"][0]["app"] == "other"
    assert config["runners"][1] == {
        "label": "edges-live",
        "app": "myorg/edges",
        "runner_url": "http://app:8000",
        "health_url": "/ready",
        "healthy_status_code": 200,
        "mode": "single-shot",
        "capacity": 1,
        "price_info": {"price": 0.01, "currency": "usd", "unit": "hour"},
    }
    with pytest.raises(ValueError, match="runner"):
        runners_json(EDGES, environ={"CAPGRAPH_LIVEPEER__URL": "http://app:8000"})


def test_go_durations():
    assert parse_duration("5s", 1) == 5 and parse_duration("300ms", 1) == 0.3 and parse_duration("1m0s", 1) == 60
    assert parse_duration("soon", 2.5) == 2.5 and parse_duration(None, 2.5) == 2.5
