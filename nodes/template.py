"""Text from a format string with named fields: how a caption becomes a prompt.

Each plain `{name}` field is one of the family's optional Text ports; the string is filled by
concatenation, never `str.format`, so a template runs no code. No weights; runs anywhere.
docs/models.md has an example and the rules.
"""

import re
import string
from collections.abc import Sequence

from pydantic import Field, field_validator

from capgraph.engine.errors import InputError
from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port

FIELDS = ("caption", "subject", "style", "text", "extra")
"""The Text ports a format string may name, in catalogue order."""
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_FORMAT = 2000
MAX_CHARS = 10_000


def parse(text: str) -> list[tuple[str, str | None]]:
    """A format string as (literal, field or None) pieces. Raises ValueError naming the
    first thing that is not a plain `{name}` field."""
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone '{' or '}'
        raise ValueError(f"{exc} (write '{{{{' and '}}}}' for literal braces)") from None
    parsed = []
    for literal, name, spec, conversion in pieces:
        if name is not None:
            if not _NAME.match(name):
                raise ValueError(
                    f"field '{{{name}}}' must be a plain name such as '{{caption}}': no attribute access, "
                    "index or positional fields"
                )
            if conversion or spec:
                raise ValueError(
                    f"field '{{{name}}}' may not have a conversion or format spec ('!{conversion or ''}', "
                    f"':{spec or ''}'); write '{{{name}}}'"
                )
        parsed.append((literal, name))
    return parsed


def fields(text: str) -> list[str]:
    """The field names of a (valid) format string, in order of first use."""
    return list(dict.fromkeys(name for _, name in parse(text) if name is not None))


class TemplateParams(NodeParams):
    format: str = Field(
        "{caption}",
        min_length=1,
        max_length=MAX_FORMAT,
        description=f"the text with named fields, e.g. '{{caption}}, watercolour'; fields are the ports "
        f"{', '.join(FIELDS)}; '{{{{' and '}}}}' are literal braces",
    )
    max_chars: int = Field(
        1000, ge=1, le=MAX_CHARS, description="longest result; longer text is cut at a word boundary"
    )
    strip: bool = Field(True, description="trim spaces around each field's text before filling it in")

    @field_validator("format")
    @classmethod
    def _plain_fields(cls, value: str) -> str:
        unknown = [name for name in fields(value) if name not in FIELDS]  # fields() raises for a malformed string
        if unknown:
            raise ValueError(f"field '{{{unknown[0]}}}' is not a port of template; fields are {', '.join(FIELDS)}")
        return value


class Template(Node):
    """Text from a format string with named Text fields (e.g. a caption turned into a prompt)."""

    type = "template"
    category = "condition"
    Params = TemplateParams
    inputs = {name: port(PortType.TEXT, doc=f"the text of field '{{{name}}}'", optional=True) for name in FIELDS}
    outputs = {"text": port(PortType.TEXT, doc="the format string with its fields filled in, at most max_chars")}
    request_params = frozenset({"format"})
    max_batch = 64

    @classmethod
    def check_wiring(cls, params: TemplateParams, wired: frozenset[str]) -> list[tuple[str, str]]:
        used = fields(params.format)
        problems = [
            (name, f"the format uses '{{{name}}}' but port '{name}' is not wired.")
            for name in used
            if name not in wired
        ]
        problems += [
            (name, f"port '{name}' is wired but the format never uses '{{{name}}}'.")
            for name in sorted(wired)
            if name not in used
        ]
        return problems

    def example_inputs(self) -> Frame:
        return {name: "warm-up" for name in fields(self.params.format)}

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[TemplateParams]) -> list[Frame]:
        return [{"text": self.fill(frame, p)} for frame, p in zip(inputs, params)]

    def fill(self, frame: Frame, p: TemplateParams) -> str:
        out: list[str] = []
        for literal, name in parse(p.format):
            out.append(literal)
            if name is None:
                continue
            if name not in frame:  # a request's own format naming a port the graph leaves unwired
                raise InputError(
                    f"params.{self.node_id}.format",
                    f"field '{{{name}}}' has no wired port in this graph; "
                    f"wired: {', '.join(sorted(frame)) or '(none)'}",
                )
            value = str(frame[name])
            out.append(value.strip() if p.strip else value)
            if sum(map(len, out)) > p.max_chars:
                break  # the rest would be cut anyway
        return shorten("".join(out), p.max_chars)


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at the last space when one is near the end."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space >= limit * 3 // 4 else cut).rstrip(" ,;")
