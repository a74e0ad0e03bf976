"""The BYOC job route, the bearer token, local capacity and /ready, over real HTTP."""

import concurrent.futures
import time

import httpx
import numpy as np

from tests.livepeer.lp_support import TOKEN, data_url, decode_data_url, photo, png, wait_for


def test_ready_is_503_until_every_node_is_warm_then_exactly_200(start_service):
    service = start_service(hold=True)
    seen = set()
    for _ in range(5):
        answer = httpx.get(f"{service.url}/ready")
        seen.add(answer.status_code)
        assert answer.status_code == 503 and answer.json() == {"status": "loading"}
        assert httpx.get(f"{service.url}/health").json()["status"] in ("LOADING", "IDLE")
        time.sleep(0.05)
    service.backend.gate.set()
    service.wait_ready()
    assert httpx.get(f"{service.url}/ready").json() == {"status": "ready"}
    assert httpx.get(f"{service.url}/health").json() == {"status": "IDLE"}


def test_job_route_runs_the_graph_and_answers_data_urls(start_service):
    service = start_service()
    service.wait_ready()
    answer = httpx.post(
        f"{service.url}/edges-live",
        json={"inputs": {"image": data_url()}, "params": {"blend.opacity": 0.0}},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body["outputs"]) == {"image", "edges"}
    image, edges = decode_data_url(body["outputs"]["image"]), decode_data_url(body["outputs"]["edges"])
    assert image.shape == (96, 128, 3)  # max_side 128, multiple of 8
    assert np.array_equal(image, edges)  # opacity 0: only the background (the edges) shows
    assert set(body["timings_ms"]) == {"fit", "edges", "blend"}


def test_bad_jobs_get_the_detail_msg_shape(start_service):
    service = start_service()
    service.wait_ready()
    url = f"{service.url}/edges-live"
    bad_json = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["detail"]["msg"]
    assert bad_json.json()["detail"]["field"] == "body"
    missing = httpx.post(url, json={"inputs": {}})
    assert missing.status_code == 422
    assert missing.json()["detail"]["field"] == "inputs.image"
    bad_param = httpx.post(url, json={"inputs": {"image": data_url()}, "params": {"fit.max_side": 64}})
    assert bad_param.status_code == 422 and "fixed by the graph" in bad_param.json()["detail"]["msg"]
    not_an_image = httpx.post(url, json={"inputs": {"image": "aGVsbG8="}})
    assert not_an_image.status_code == 400 and not_an_image.json()["detail"]["field"] == "inputs.image"


def test_the_job_route_reads_a_job_exactly_as_v1_does(start_service):
    """One parser for every job route: the answers /v1 gives, in the Livepeer shape."""
    import json

    service = start_service()
    service.wait_ready()
    url = f"{service.url}/edges-live"
    job = {"inputs": {"image": data_url()}, "params": {"blend.opacity": 0.0}}
    as_text = httpx.post(url, content=json.dumps(job), headers={"Content-Type": "text/plain"})
    assert as_text.status_code == 415 and as_text.json()["detail"]["field"] == "headers.content-type"
    wrong_type = httpx.post(url, json={"inputs": {"image": data_url()}, "params": {"blend.opacity": "0.5"}})
    assert wrong_type.status_code == 422 and wrong_type.json()["detail"]["field"] == "params.blend.opacity"
    assert 'send 0.5, not "0.5"' in wrong_type.json()["detail"]["msg"]
    form = httpx.post(
        url, files={"image": ("in.png", png(), "image/png")}, data={"params": '{"blend.opacity": 0.0}'}, timeout=30
    )
    assert form.status_code == 200, form.text  # multipart, as /v1 takes it
    assert form.json()["outputs"] == httpx.post(url, json=job, timeout=30).json()["outputs"]


def test_bearer_token_is_checked_when_configured(start_service):
    service = start_service(env={"CAPGRAPH_AUTH_TOKEN": TOKEN})
    service.wait_ready()
    url = f"{service.url}/edges-live"
    job = {"inputs": {"image": data_url()}}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        answer = httpx.post(url, json=job, headers=headers)
        assert answer.status_code == 401 and answer.json() == {"detail": {"msg": "Invalid bearer token."}}
    assert httpx.post(url, json=job, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).status_code == 200
    assert httpx.get(f"{service.url}/ready").status_code == 200  # health checks carry no token


def test_jobs_beyond_capacity_get_503_busy_at_once(start_service):
    service = start_service()  # capacity 1 in the graph file
    service.wait_ready()
    service.backend.runs_open.clear()
    url = f"{service.url}/edges-live"
    job = {"inputs": {"image": data_url()}}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, url, json=job, timeout=30)
        wait_for(lambda: service.backend.runs_started == 1)
        start = time.perf_counter()
        second = httpx.post(url, json=job, timeout=30)
        refused_in = time.perf_counter() - start
        assert second.status_code == 503 and second.json() == {"detail": {"msg": "busy"}}
        assert refused_in < 1.0
        service.backend.runs_open.set()
        assert first.result().status_code == 200
    assert httpx.post(url, json=job, timeout=30).status_code == 200  # the slot came back


def test_jobs_while_loading_get_503(start_service):
    service = start_service(hold=True)
    answer = httpx.post(f"{service.url}/edges-live", json={"inputs": {"image": data_url(photo())}})
    assert answer.status_code == 503 and answer.json() == {"detail": {"msg": "loading"}}
