"""The graph file format as pydantic models: one YAML file is one graph and one capability
(capability, version, inputs, nodes, outputs, params, requires). Ray Serve's own
top-level keys are allowed beside the graph so the same file is a `serve run` config.
docs/graph-format.md is the reference.
"""

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from capgraph.engine.types import PortType

CAPABILITY = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
IDENT = r"^[a-z_][a-z0-9_]*$"
REFERENCE = re.compile(r"^(?P<first>[a-z_][a-z0-9_]*)(\.(?P<port>[a-z_][a-z0-9_]*))?$")

# Top-level keys of a Ray Serve config file (ray.serve.schema.ServeDeploySchema): allowed so
# that a graph file is also a valid `serve run` / `serve deploy` config.
RAY_KEYS = frozenset(
    {
        "applications",
        "proxy_location",
        "http_options",
        "grpc_options",
        "logging_config",
        "target_capacity",
        "controller_options",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """A named graph input. `default` makes it optional."""

    type: PortType
    default: Any = None
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `image: image` is short for `image: {type: image}`
        return {"type": value} if isinstance(value, str) else value

    @property
    def required(self) -> bool:
        return self.default is None


class Resources(_Strict):
    gpu: float | None = Field(None, ge=0, le=8, description="GPU fraction (0.25 lets four nodes share one GPU)")
    cpu: float | None = Field(None, gt=0, le=64, description="CPU cores for the node's replica")


class Batch(_Strict):
    max_size: int = Field(8, ge=1, le=256, description="largest batch of frames per call")
    wait_ms: float = Field(10.0, ge=0, le=10_000, description="how long a batch waits to fill")


class Autoscale(_Strict):
    """`replicas: {min, max}`: Ray Serve's autoscaler keeps each replica near
    `target_ongoing_requests` frames. Unset, it is two of the node's batches (one running,
    one filling): Ray's default of 2 would add a replica before a batch could ever fill."""

    min: int = Field(1, ge=0, le=1024)
    max: int = Field(1, ge=1, le=1024)
    target_ongoing_requests: float | None = Field(
        None, gt=0, le=100_000, description="frames a replica holds before another is added; default: two batches"
    )
    upscale_delay_s: float = Field(
        10.0, ge=0, le=3600, description="load must stay high this long before a replica is added"
    )
    downscale_delay_s: float = Field(
        120.0, ge=0, le=86_400, description="load must stay low this long before a replica goes"
    )
    look_back_period_s: float = Field(30.0, gt=0, le=3600, description="the window the load is averaged over")

    @model_validator(mode="after")
    def _ordered(self) -> "Autoscale":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class SwitchSpec(_Strict):
    """A graph-level Bool param that sets no node param: it only turns nodes on or off
    (`when:`). A request sets it by name (`{"params": {"upscale": false}}`)."""

    type: Literal["bool"] = Field(description="a switch is a Bool")
    default: bool = Field(False, description="its value when a request does not set it")
    description: str = ""


class OutputSpec(_Strict):
    """A graph output in its long form: where it comes from, and whether it may go without a
    value (its node skipped on some branch, `when:`); an answer then leaves it out."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: str = Field(alias="from", description="node.port (or a graph input) it comes from")
    optional: bool = Field(False, description="it may have no value: an answer leaves it out then")


def output_ref(value: "str | OutputSpec") -> str:
    """Where an output comes from, in either form."""
    return value if isinstance(value, str) else value.source


When = str | dict[Literal["not"], str]
"""`when: upscale` (the node runs when `upscale` is true) or `when: {not: upscale}`."""


class NodeSpec(_Strict):
    """One node: a family, its params, where each input port is wired from, and when it runs."""

    type: str = Field(description="node family id; `capgraph nodes` lists them")
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, description="port -> graph input name or node.port")
    resources: Resources = Field(default_factory=Resources)
    batch: Batch | None = None
    replicas: int | Autoscale = Field(1, description="a replica count, or {min, max} to autoscale")
    group: str | None = Field(None, pattern=IDENT, description="nodes with the same group share one deployment")
    when: When | None = Field(
        None,
        description="run only when this Bool graph input or switch param is true ({not: name}: when it is false); "
        "otherwise the node is skipped and costs nothing",
    )
    description: str = ""

    @field_validator("when", mode="before")
    @classmethod
    def _condition(cls, value: Any) -> Any:
        plain = isinstance(value, str) and re.match(IDENT, value)
        negated = isinstance(value, dict) and list(value) == ["not"] and isinstance(value["not"], str)
        if value is not None and not (plain or (negated and re.match(IDENT, value["not"]))):
            raise ValueError("must name a Bool graph input or switch param, e.g. 'upscale', or be {not: upscale}")
        return value

    @field_validator("replicas")
    @classmethod
    def _positive(cls, value: int | Autoscale) -> int | Autoscale:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError("replicas must be between 1 and 1024")
        return value


class GraphSpec(_Strict):
    """A whole graph file (Ray keys excluded)."""

    capability: str = Field(pattern=CAPABILITY, description="advertised name, lowercase-with-hyphens")
    version: str = Field("v1", pattern=r"^v[0-9]+(\.[0-9]+)*$")
    description: str = ""
    requires: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=32,
        description="pip requirements that provide the graph's plug-in node families, e.g. capgraph-caption>=0.1: "
        "a machine without one says which package to install",
    )
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    nodes: dict[str, NodeSpec]
    outputs: dict[str, str | OutputSpec] = Field(
        description="output name -> node.port, or {from: node.port, optional: true} for one that a branch may leave "
        "without a value"
    )
    params: dict[Annotated[str, StringConstraints(pattern=IDENT)], str | SwitchSpec] = Field(
        default_factory=dict,
        description="request params by a name of the graph's own -> the node.param it sets "
        "(one the node's family lets a request set), e.g. {seed: generate.seed}; or a switch "
        "that nodes' `when:` reads, e.g. {upscale: {type: bool, default: true}}",
    )

    def sections(self) -> dict[str, Any]:
        """The graph as plain data (what a Serve builder gets in its args)."""
        return self.model_dump(mode="json", exclude_defaults=True)


GRAPH_KEYS = tuple(GraphSpec.model_fields)


def parse_reference(text: str) -> tuple[str | None, str] | None:
    """`image` -> (None, 'image'); `depth.depth_map` -> ('depth', 'depth_map'); junk -> None."""
    match = REFERENCE.match(text) if isinstance(text, str) else None
    if not match:
        return None
    if match["port"] is None:
        return None, match["first"]
    return match["first"], match["port"]


def json_schema_for(families: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema of the graph format, with one node variant per family so editors can
    complete `params` and `inputs` for each `type`."""
    schema = GraphSpec.model_json_schema()
    variants = []
    for family_id, family in families.items():
        params = family.Params.model_json_schema()
        defs = params.pop("$defs", {})
        schema.setdefault("$defs", {}).update(defs)
        variants.append(
            {
                "title": family_id,
                "description": family.doc(),
                "if": {"properties": {"type": {"const": family_id}}, "required": ["type"]},
                "then": {
                    "properties": {
                        "params": params,
                        "inputs": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                name: {"type": "string", "description": f"{p.label}: {p.doc}"}
                                for name, p in family.inputs.items()
                            },
                        },
                    }
                },
            }
        )
    node_schema = schema["$defs"]["NodeSpec"]
    node_schema["properties"]["type"]["enum"] = list(families)
    node_schema["allOf"] = variants
    for key in RAY_KEYS:
        schema["properties"][key] = {"description": "Ray Serve config (see `serve run` docs)"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "capgraph graph file"
    return schema
