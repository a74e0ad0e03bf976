"""Which replica moves when a machine comes back (`serve.cluster.respread`), and the record the
replicas keep of machines and moves in Ray's KV store; the move itself, on a real cluster,
is in tests/cluster/test_cluster.py."""

import json
import time

from capgraph.serve.cluster import respread
from capgraph.serve.cluster.respread import Machines, Move, Replica, claimed, fits, mover, request_of

LOST_AT = 10.0
"""A machine was noticed gone at t=10; r2 (t=12) is a replacement Ray started meanwhile."""
BACK = Machines({"b": 0.0, "c": 20.0}, lost=(LOST_AT,))
"""c rejoined at t=20, after the replacement started."""


def replicas(*placed: tuple[str, str, float]) -> list[Replica]:
    return [Replica(rid, machine, started) for rid, machine, started in placed]


def test_the_newest_replica_on_the_crowded_machine_moves_to_a_machine_that_came_back():
    crowded = replicas(("r1", "b", 1.0), ("r2", "b", 12.0), ("r3", "b", 3.0))
    assert mover(crowded, {"b": False, "c": True}, BACK) == "r2"


def test_spread_replicas_stay():
    assert mover(replicas(("r1", "b", 1.0), ("r2", "c", 12.0)), {"b": True, "c": True}, BACK) is None
    assert (
        mover(replicas(("r1", "b", 1.0), ("r2", "b", 12.0), ("r3", "c", 13.0)), {"b": True, "c": True}, BACK) is None
    )  # 2, 1


def test_nothing_moves_to_a_machine_without_room():
    """The returned machine is taken by something else: a move would only come back."""
    assert mover(replicas(("r1", "b", 1.0), ("r2", "b", 12.0)), {"b": False, "c": False}, BACK) is None
    assert mover([], {"b": True}, BACK) is None


def test_nothing_moves_back_to_a_machine_autoscaling_emptied():
    """Scaling down, Ray stopped the replicas of the least busy machine on purpose (an idle
    machine can leave the cluster): those left stay where they are, whether that machine
    was there all along, joined for the scale-up, or a machine was lost long before."""
    left = replicas(("r1", "b", 1.0), ("r2", "b", 5.0))
    room = {"b": True, "c": True}
    assert mover(left, room, Machines({"b": 0.0, "c": 0.0})) is None
    assert mover(left, room, Machines({"b": 0.0, "c": 9.0})) is None  # joined for the scale-up: no loss
    assert mover(left, room, Machines({"b": 0.0, "c": 90.0}, lost=(80.0,))) is None  # r2 is no replacement
    assert mover(left, room, Machines({"b": 0.0, "c": 90.0}, lost=(20.0,))) == "r2"  # lost just before r2 started
    late = replicas(("r1", "b", 1.0), ("r2", "b", 20.0 + respread.REPLACED_WITHIN_S + 1))
    assert mover(late, room, Machines({"b": 0.0, "c": 9000.0}, lost=(20.0,))) is None  # started long after that loss


def test_a_move_whose_replacement_came_back_to_the_crowded_machine_tries_again():
    """r3 replaced r2, moved at t=30, but Ray put it on b again: it moves (after the back-off)."""
    again = replicas(("r1", "b", 1.0), ("r3", "b", 31.0))
    assert mover(again, {"b": False, "c": True}, BACK) is None  # c joined before r3 started
    assert mover(again, {"b": False, "c": True}, BACK, moved_at=30.0) == "r3"
    assert (
        mover(replicas(("r1", "b", 1.0), ("r3", "c", 31.0)), {"b": True, "c": True}, BACK, moved_at=30.0) is None
    )  # it went


def test_only_a_replica_started_after_a_loss_asks_the_controller():
    assert BACK.could_move(12.0)
    assert not BACK.could_move(50.0)  # nothing joined since
    assert not Machines({"b": 0.0, "c": 20.0}).could_move(12.0)  # no loss


def test_a_machine_fits_what_the_deployment_asks_of_ray():
    request = request_of({"num_cpus": 0.5, "num_gpus": 0.5, "resources": {"machine_b": 0.01}})
    assert request == {"CPU": 0.5, "GPU": 0.5, "memory": 0.0, "machine_b": 0.01}
    assert fits({"CPU": 2.0, "GPU": 1.0, "machine_b": 1.0}, request)
    assert not fits({"CPU": 2.0, "GPU": 0.25, "machine_b": 1.0}, request)  # half a GPU does not fit a quarter
    assert not fits({"CPU": 2.0, "GPU": 1.0}, request)  # no such resource there
    assert fits({"CPU": 0.5}, request_of({"num_cpus": 0.5}))


def test_the_replicas_record_machines_that_join_and_die(cluster):
    """In Ray's KV store: the machines of the first look joined at 0, and one dead already
    counts as lost then; a new Ray node (a machine back from a loss) joins when first seen,
    a machine that dies is lost when first seen dead."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(b"respread/machines", namespace=respread.NAMESPACE)
    try:
        before = time.time()
        first = respread._note_machines(["b", "c"], ["a"])
        assert first.joined == {"b": 0.0, "c": 0.0} and len(first.lost) == 1 and first.lost[0] >= before
        time.sleep(0.01)
        lost = respread._note_machines(["b"], ["a", "c"])
        assert lost.joined == {"b": 0.0} and len(lost.lost) == 2 and lost.lost[0] == first.lost[0] < lost.lost[1]
        back = respread._note_machines(["b", "c2"], ["a", "c"])
        assert back.joined["b"] == 0.0 and back.joined["c2"] >= before and back.lost == lost.lost
        assert respread._note_machines(["b", "c2"], ["a", "c"]) == back  # nothing changed, nothing written
        many = [f"dead{i}" for i in range(20)]
        respread._note_machines(["b", "c2"], ["a", "c", *many])
        time.sleep(0.01)
        assert (
            respread._note_machines(["b", "c2"], ["a", "c", *many]).lost[-1] < time.time() - 0.005
        )  # no loss seen anew
    finally:
        internal_kv._internal_kv_del(b"respread/machines", namespace=respread.NAMESPACE)


def test_a_stale_claim_blocks_nothing_and_only_the_deployments_replicas_drop_it(cluster):
    from ray.experimental import internal_kv

    key = respread._key("app", "depth", "move")
    fresh, stale = Move("r1", "b", time.time()), Move("r1", "b", time.time() - respread.STALE_S - 1)
    try:
        internal_kv._internal_kv_put(key, json.dumps(fresh.__dict__), namespace=respread.NAMESPACE)
        assert claimed("app", "depth") == fresh
        internal_kv._internal_kv_put(key, json.dumps(stale.__dict__), namespace=respread.NAMESPACE)
        assert claimed("app", "depth") is None  # /health reads it as no move, and leaves it
        assert internal_kv._internal_kv_get(key, namespace=respread.NAMESPACE)
        assert claimed("app", "depth", tidy=True) is None
        assert not internal_kv._internal_kv_get(key, namespace=respread.NAMESPACE)
    finally:
        internal_kv._internal_kv_del(key, namespace=respread.NAMESPACE)
