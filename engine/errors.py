"""Problems found in a graph, reported together and rendered as text or JSON (`GraphError`,
`GraphInvalid`), and the two ways a request fails: `InputError` (the caller's mistake,
a 4xx) and `NodeFailed` (a 5xx), which cross process boundaries as dicts.
"""

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class GraphError:
    code: str
    message: str
    file: str = "<graph>"
    line: int | None = None
    column: int | None = None
    node: str | None = None
    port: str | None = None
    hint: str | None = None
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        label = "" if self.severity == "error" else "warning: "
        text = f"{where}: {label}{self.message}"
        if self.hint:
            text += f" {self.hint}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class GraphInvalid(Exception):
    """Raised with every error found in a graph (warnings ride along for display)."""

    def __init__(self, problems: Iterable[GraphError]):
        self.problems = sorted(problems, key=_order)
        self.errors = [p for p in self.problems if p.severity == "error"]
        super().__init__(self.render())

    def render(self) -> str:
        lines = [str(p) for p in self.problems]
        count = len(self.errors)
        lines.append(f"{count} error{'s' if count != 1 else ''} found.")
        return "\n".join(lines)


def _order(problem: GraphError) -> tuple[str, int, int]:
    return (problem.file, problem.line or 0, problem.column or 0)


def did_you_mean(word: str, choices: Iterable[str], *, allowed_label: str = "Allowed") -> str:
    """`Did you mean 'x'? Allowed: a, b, c.` with the list cut short past 20 names."""
    options = sorted(choices)
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    hint = ""
    if close:
        hint = "Did you mean " + " or ".join(f"'{c}'" for c in close) + "? "
    shown = options if len(options) <= 20 else options[:20] + [f"... ({len(options) - 20} more)"]
    return hint + f"{allowed_label}: {', '.join(shown) if shown else '(none)'}."


class InputError(ValueError):
    """A request or CLI input that does not fit the graph: `field` names what to fix.

    The HTTP layer answers it as a 4xx with `field` in the JSON body; the CLI prints it.
    """

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status

    def to_dict(self) -> dict[str, Any]:
        """What crosses a process boundary (a Serve replica's answer); `from_dict` rebuilds it."""
        return {"field": self.field, "msg": self.message, "status": self.status}


class NodeFailed(RuntimeError):
    """The graph could not answer a frame, through no fault of the caller's. `status` says
    how, as HTTP does: 500, a node raised on it (`node` names it); 503, a replica of a node
    died or cannot be reached, or the capability runs all the requests it may (retry in
    `retry_after` seconds); 504, no answer within the request's time.

    Raised by the run loop and by the Serve ingress; every front end (the CLI, `/v1`, the
    Livepeer routes) answers it as it answers an `InputError`, in its own words.
    """

    def __init__(self, message: str, node: str | None = None, status: int = 500, retry_after: float | None = None):
        super().__init__(message)
        self.message, self.node, self.status, self.retry_after = message, node, status, retry_after

    def to_dict(self) -> dict[str, Any]:
        """What crosses a process boundary (a Serve replica's answer); `from_dict` rebuilds it."""
        return {"node": self.node, "msg": self.message, "status": self.status, "retry_after": self.retry_after}


def from_dict(error: Mapping[str, Any]) -> InputError | NodeFailed:
    """The error an `InputError.to_dict()` or a `NodeFailed.to_dict()` describes."""
    if "field" in error:
        return InputError(error["field"], error["msg"], error["status"])
    return NodeFailed(error["msg"], error.get("node"), error["status"], error.get("retry_after"))
