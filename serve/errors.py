"""What the capability's run path raises beside `engine.errors.InputError`, shared by the
ingress and its HTTP app: `NodeFault`, the wait a retryable 503 asks for, and the one line
of an exception an answer shows."""

RETRY_AFTER_S = 1
"""What a retryable 503 (a replica died, the capability is full) tells the caller to wait."""


class NodeFault(RuntimeError):
    """A node failed on a frame (capgraph's own fault: HTTP 500), or none of its replicas
    could be reached or the capability is full (503, worth retrying)."""

    def __init__(self, message: str, node: str | None = None, status: int = 500):
        super().__init__(message)
        self.node, self.status = node, status


def first_line(exc: BaseException) -> str:
    """One line of an exception for an answer: Ray's messages can carry a remote traceback."""
    return (str(exc).strip().splitlines() or [""])[0][:200]
