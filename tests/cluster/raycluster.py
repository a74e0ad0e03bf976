"""A real multi-node Ray cluster on 127.0.0.1, started the way an operator starts one:
`ray start --head` on one machine and `ray start --address HEAD` on each of the others.

Every node here is a Ray node of its own (its own raylet, object store, resources and
environment) on this one host. Each gets its own ports, and the cluster its own temp
folder, so it neither finds nor disturbs another Ray on the machine (a local `ray.init()`
elsewhere in the test run, or a developer's `ray start`). Stopping it kills exactly the
processes that name that folder: `ray stop` would stop every Ray on the machine.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.serve.support import free_port

RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))
NODE_DEATH_ENV = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_timeout_ms": "500",
}
"""The GCS declares a silent machine dead after 1.5 s here instead of 15 s."""


def node_ports() -> list[str]:
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


@dataclass
class Machine:
    name: str
    args: list[str]
    env: dict[str, str]
    node_manager_port: int = 0


@dataclass
class RayCluster:
    temp_dir: str = field(
        default_factory=lambda: tempfile.mkdtemp(prefix="cgray", dir="/tmp")
    )  # unix sockets live here: keep it short
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    machines: dict[str, Machine] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, env: dict[str, str], *args: str) -> None:
        self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.temp_dir}",
                "--node-ip-address=127.0.0.1",
                *args,
            ],
            env | NODE_DEATH_ENV,
        )

    def add(self, name: str, env: dict[str, str], *args: str) -> None:
        self._start(name, [f"--address={self.address}", "--node-ip-address=127.0.0.1", *args], env)

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        ports = node_ports()
        machine = Machine(name, args, env, int(ports[0].split("=")[1]))
        done = subprocess.run(
            [RAY, "start", *args, *ports, "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{done.stdout}\n{done.stderr}")
        self.machines[name] = machine

    def restart(self, name: str) -> None:
        machine = self.machines.pop(name)
        self._start(name, machine.args, machine.env)

    def lose(self, name: str) -> None:
        """The machine dies: its raylet and everything under it are killed at once."""
        raylet = self._raylet(name)
        victims = [raylet, *raylet.children(recursive=True)]
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=10)
        # Workers of that node are the raylet's children, its agents too; the object
        # store runs inside the raylet. What is left names its node manager port.
        for p in self._naming(f"--node_manager_port={self.machines[name].node_manager_port}"):
            p.kill()

    def _raylet(self, name: str) -> psutil.Process:
        port = self.machines[name].node_manager_port
        for p in self._naming(self.temp_dir):
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0].endswith("raylet") and f"--node_manager_port={port}" in cmd:
                return p
        raise LookupError(f"no raylet for machine {name} (node manager port {port})")

    def _naming(self, text: str) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if any(text in part for part in (p.info["cmdline"] or []))]

    def stop(self) -> None:
        """Kill every process of this cluster (those naming its temp folder, and their children)."""
        found = {p.pid: p for p in self._naming(self.temp_dir)}
        for p in list(found.values()):
            try:
                found.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                pass
        for p in found.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(list(found.values()), timeout=15)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without capgraph's, Hugging Face's or Ray's own settings:
    what a machine started by hand would have. With Ray's token authentication on, as the
    README's steps set it (`RAY_AUTH_MODE=token`: `ray start --address` on another machine
    only sends the token when told to)."""
    drop = ("CAPGRAPH_", "HF_", "TRANSFORMERS_", "RAY_ADDRESS", "PYTEST_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | {"RAY_AUTH_MODE": "token"} | extra
