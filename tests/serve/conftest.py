"""The Serve tests' Ray cluster (`cluster`, `serve_url`) is in tests/serve/cluster.py, a
plug-in of the repository's conftest.py: one for the session, which the plug-ins' served
tests share."""

from tests.serve.cluster import TINY_ENV, Cluster

__all__ = ["TINY_ENV", "Cluster"]
