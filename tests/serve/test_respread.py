"""Which replica moves when a machine comes back (`serve.respread`); the move itself, on a
real cluster, is in tests/cluster/test_cluster.py."""

from capgraph.serve.respread import Replica, fits, mover, request_of


def replicas(*placed: tuple[str, str, float]) -> list[Replica]:
    return [Replica(rid, machine, started) for rid, machine, started in placed]


def test_the_newest_replica_on_the_crowded_machine_moves_to_a_machine_that_came_back():
    crowded = replicas(("r1", "b", 1.0), ("r2", "b", 5.0), ("r3", "b", 3.0))
    assert mover(crowded, {"b": False, "c": True}, {"b": 0.0, "c": 9.0}) == "r2"


def test_spread_replicas_stay():
    joined = {"b": 0.0, "c": 9.0}
    assert mover(replicas(("r1", "b", 1.0), ("r2", "c", 2.0)), {"b": True, "c": True}, joined) is None
    assert mover(replicas(("r1", "b", 1.0), ("r2", "b", 2.0), ("r3", "c", 3.0)), {"b": True, "c": True}, joined) is None  # 2 and 1


def test_nothing_moves_to_a_machine_without_room():
    """The returned machine is taken by something else: a move would only come back."""
    assert mover(replicas(("r1", "b", 1.0), ("r2", "b", 2.0)), {"b": False, "c": False}, {"c": 9.0}) is None
    assert mover([], {"b": True}, {}) is None


def test_nothing_moves_back_to_a_machine_autoscaling_emptied():
    """Scaling down, Ray stopped the replicas of the machine that has been there all along,
    on purpose (an idle machine can leave the cluster): they stay where they are."""
    left = replicas(("r1", "b", 1.0), ("r2", "b", 5.0))
    assert mover(left, {"b": True, "c": True}, {"b": 0.0, "c": 0.0}) is None
    assert mover(left, {"b": True, "c": True}, {"b": 0.0, "c": 4.0}) is None  # it joined before r2 started


def test_a_machine_fits_what_the_deployment_asks_of_ray():
    request = request_of({"num_cpus": 0.5, "num_gpus": 0.5, "resources": {"machine_b": 0.01}})
    assert request == {"CPU": 0.5, "GPU": 0.5, "memory": 0.0, "machine_b": 0.01}
    assert fits({"CPU": 2.0, "GPU": 1.0, "machine_b": 1.0}, request)
    assert not fits({"CPU": 2.0, "GPU": 0.25, "machine_b": 1.0}, request)  # half a GPU does not fit a quarter
    assert not fits({"CPU": 2.0, "GPU": 1.0}, request)  # no such resource there
    assert fits({"CPU": 0.5}, request_of({"num_cpus": 0.5}))
