"""Fixtures tests/ and the plug-ins' tests (plugins/*/tests) share: the Serve tests' Ray
cluster, started once for the session by the first test that asks for it."""

pytest_plugins = ["tests.serve.cluster"]
