"""A third-party package adds routes to a served capability through the `capgraph.mounts`
entry point group, as capgraph's own Livepeer routes do: its section of the graph file is
validated with lines, and its routes and error shape join the capability's app."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from capgraph.engine import mounts
from capgraph.engine.errors import GraphInvalid
from capgraph.engine.validate import load_plan
from capgraph.engine.yamlload import load_yaml
from capgraph.serve.capability.ingress import Capability, Settings
from capgraph.serve.capability.routes import capability_app
from capgraph.serve.compile.compiler import compile_plan
from capgraph.serve.compile.config_check import check_deployment_sections

AUDIT = """
from fastapi.responses import JSONResponse


class AuditMount:
    section = "audit"

    def check(self, raw, plan):
        if raw is None or isinstance(raw, dict) and isinstance(raw.get("who", ""), str):
            return []
        return ["audit.who: must be a string."]

    def settings(self, plan, raw):
        problems = self.check(raw, plan)
        if problems:
            raise ValueError(problems[0])
        return dict(raw or {})

    def attach(self, app, capability, settings):
        @app.get("/audit")
        async def audit():
            return {"capability": capability.plan.capability, "who": settings.get("who")}

        @app.post("/audit")
        async def fail():
            raise RuntimeError("boom")

        return {"/audit"}

    def error(self, exc, headers):
        return JSONResponse({"audit_error": getattr(exc, "message", str(exc))}, status_code=getattr(exc, "status", 500))


MOUNT = AuditMount()
"""

GRAPH = """\
capability: audited
inputs: {image: image}
nodes:
  edges: {type: canny, inputs: {image: image}}
outputs: {edges: edges.edges}
audit:
  who: {WHO}
"""


@pytest.fixture
def audit_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The package `capgraph_audit`, installed as pip would leave it: a module and a dist-info."""
    (tmp_path / "capgraph_audit.py").write_text(AUDIT)
    info = tmp_path / "capgraph_audit-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: capgraph-audit\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[capgraph.mounts]\naudit = capgraph_audit:MOUNT\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mounts.section_names.cache_clear()
    mounts.mounts.cache_clear()
    yield tmp_path
    mounts.section_names.cache_clear()
    mounts.mounts.cache_clear()


def test_a_mount_is_found_by_its_entry_point_beside_livepeer(audit_installed: Path) -> None:
    assert {"audit", "livepeer"} <= mounts.section_names()
    assert type(mounts.mounts()["audit"]).__name__ == "AuditMount"


def test_its_section_is_checked_with_the_line_it_sits_on(audit_installed: Path) -> None:
    path = audit_installed / "graph.yaml"
    path.write_text(GRAPH.replace("{WHO}", "[not, a, string]"))
    plan = load_plan(path)  # the section is the mount's: the graph itself is valid
    (problem,) = check_deployment_sections(load_yaml(path.read_text()), plan, str(path))
    assert (problem.code, problem.line) == ("audit", 7) and "must be a string" in problem.message


def test_its_routes_and_error_shape_join_the_capability(audit_installed: Path) -> None:
    path = audit_installed / "graph.yaml"
    path.write_text(GRAPH.replace("{WHO}", "ops"))
    unwrapped = Capability.__bases__[0]  # the class under Serve's ingress wrapper, built outside a replica
    capability = unwrapped(compile_plan(load_plan(path)), {}, Settings(mounts={"audit": {"who": "ops"}}))
    client = TestClient(capability_app(capability), raise_server_exceptions=False)
    assert client.get("/audit").json() == {"capability": "audited", "who": "ops"}
    assert client.post("/audit").json() == {"audit_error": "internal error; the capability logged it"}
    assert client.get("/nowhere").json()["error"]["field"] == "path"  # capgraph's own shape elsewhere


def test_a_bad_section_stops_the_build_before_ray(audit_installed: Path) -> None:
    from capgraph.serve.app import _check_mounts

    path = audit_installed / "graph.yaml"
    path.write_text(GRAPH.replace("{WHO}", "[1]"))
    with pytest.raises(GraphInvalid, match="audit.who: must be a string"):
        _check_mounts(load_plan(path), {"audit": {"who": [1]}})
