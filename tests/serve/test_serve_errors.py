"""One failure type from node to answer: InputError and NodeFailed cross a process
boundary as dicts and come back whole; each HTTP shape renders both. No Ray, no server."""

import json

from capgraph.engine.errors import InputError, NodeFailed, from_dict
from capgraph.livepeer.guard import failure
from capgraph.serve.capability.errors import error_answer


def test_errors_cross_a_process_boundary_and_come_back_whole():
    failed = from_dict(NodeFailed("node 'depth' failed", "depth", 503, retry_after=1).to_dict())
    assert isinstance(failed, NodeFailed)
    assert (failed.message, failed.node, failed.status, failed.retry_after) == ("node 'depth' failed", "depth", 503, 1)
    bad = from_dict(InputError("inputs.image", "not an image", 413).to_dict())
    assert isinstance(bad, InputError) and (bad.field, bad.message, bad.status) == ("inputs.image", "not an image", 413)


def test_capgraph_shape_names_the_field_or_the_node_and_asks_for_a_retry_only_when_it_may_help():
    node = error_answer(NodeFailed("node 'depth' failed", "depth"))
    assert node.status_code == 500 and json.loads(node.body) == {
        "error": {"node": "depth", "msg": "node 'depth' failed"}
    }
    assert "retry-after" not in node.headers
    full = error_answer(NodeFailed("the capability is full", status=503, retry_after=1))
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert json.loads(full.body) == {"error": {"msg": "the capability is full"}}
    bad = error_answer(InputError("params.steps", "too many", 422))
    assert bad.status_code == 422 and json.loads(bad.body) == {"error": {"field": "params.steps", "msg": "too many"}}


def test_livepeer_shape_keeps_the_status_and_words_it_the_routes_way():
    busy = failure(
        NodeFailed("a node replica died", status=503, retry_after=1), "edges pipeline error: a node replica died"
    )
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert json.loads(busy.body) == {"detail": {"msg": "edges pipeline error: a node replica died"}}
    bad = failure(InputError("inputs.image", "missing", 422))
    assert bad.status_code == 422 and json.loads(bad.body) == {"detail": {"msg": "missing", "field": "inputs.image"}}
    unexpected = failure(RuntimeError("boom"), "edges pipeline error.")
    assert unexpected.status_code == 500 and json.loads(unexpected.body) == {"detail": {"msg": "edges pipeline error."}}
