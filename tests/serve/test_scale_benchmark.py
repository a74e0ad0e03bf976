"""benchmarks/scale.py, as far as a test can afford it: its smallest configuration takes
about 40 s on two busy cores (a Ray cluster, a deployment, a measured window), so the
figures come from running it (`python benchmarks/scale.py --json`); here, that it starts,
and that its `hold` family does what the figures rest on."""

import os
import subprocess
import sys
import time

from benchmarks.hold import FAMILY, Hold, HoldParams
from tests.conftest import ROOT


def test_help_names_what_it_reports():
    done = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "--json" in done.stdout and "--batch-ms" in done.stdout and "--configs" in done.stdout


def test_hold_holds_its_replica_once_per_batch_and_passes_values_through():
    hold = Hold(HoldParams(batch_ms=50))
    started = time.perf_counter()
    out = hold.run_batch([{"value": float(i)} for i in range(8)], [hold.params] * 8)
    took = time.perf_counter() - started
    assert out == [{"value": float(i)} for i in range(8)]
    assert 0.05 <= took < 0.3, f"one batch of 8 held {took:.3f} s; 0.05 s expected (a batch, not a frame)"


def test_hold_reaches_a_fresh_process_through_capgraph_nodes():
    """What every Ray process of the benchmark does: the repository on PYTHONPATH, the family
    named in CAPGRAPH_NODES (serve.cluster.environment forwards it to replicas)."""
    env = os.environ | {"CAPGRAPH_NODES": FAMILY, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "capgraph", "nodes", "hold", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert '"hold"' in done.stdout and '"batch_ms"' in done.stdout
