"""The node contract: what every node family is and does. A family is a small class whose
class attributes (`Params`, `inputs`, `outputs`, `weights`, `cost_ms`) are data the validator
and the catalogue read without loading anything, and whose methods (`load`, `run_batch`,
`warmup`) do the work once per process or replica. docs/graph-format.md has an example.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from capgraph.engine.types import Port, PortType
from capgraph.engine.video import Video
from capgraph.engine.weights import Weights, resolve

FAMILY_ID = re.compile(r"^[a-z][a-z0-9_]*$")


class NodeParams(BaseModel):
    """Base for a family's params: frozen, no unknown keys, every field bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(NodeParams):
    pass


Frame = dict[str, Any]


class Node:
    type: ClassVar[str]
    """Family id used in graph files (`type: canny`)."""
    category: ClassVar[str] = "condition"
    """Catalogue section: io, condition, vision or generation."""
    Params: ClassVar[type[NodeParams]] = NoParams
    inputs: ClassVar[dict[str, Port]] = {}
    outputs: ClassVar[dict[str, Port]] = {}
    request_params: ClassVar[frozenset[str]] = frozenset()
    """Params a request may override (`{"params": {"node.param": ...}}`). Anything that
    loads or reads a file (a model id, a device, a dtype) must never be listed here."""
    uses_gpu: ClassVar[bool] = False
    """Whether the family runs a model that benefits from a GPU."""
    max_batch: ClassVar[int] = 8
    """Default `batch.max_size` when the graph sets none."""
    cost_ms: ClassVar[float | None] = None
    """Milliseconds a frame the planner assumes for this family until `capgraph tune`
    measures the node; None: the planner's default for a model or a weightless family.
    Only the ratios between a graph's nodes matter: the built-in figures are the tiny
    hybrid chain's on 2 CPUs (generation 126 ms, upscale 35, depth 12), rounded, with the
    other model families estimated beside them."""
    request_timeout_s: ClassVar[float | None] = None
    """Seconds one request may need where the family's work is long (a whole clip on a
    GPU): a served graph's request timeout, unless set, is the longest of its nodes' (at
    least the default 60 s). None: a frame's work, well inside the default."""
    weights: ClassVar[Mapping[str, Weights]] = {}
    """The models the family loads, by name: the name of the param that holds the model's
    id (`"model"`), or a name of the family's choosing where the id lives elsewhere (in a
    list of ControlNets, or picked by a method). Weightless families declare none."""

    shared_weights: ClassVar[frozenset[str] | None] = None
    """The params that decide the weights nodes of the family load, where graphs served
    together could share one copy (`serve.compile.sharing`). None: every load-time param (all but
    `request_params`), and nodes share only with the same optional ports wired. A family
    that names fewer runs each frame with its caller's params and the ports its caller
    wired (its `run_batch` follows both per frame), and says in `for_callers` what the one
    node serving several callers loads."""

    def __init__(self, params: NodeParams, node_id: str = "") -> None:
        self.params = params
        self.node_id = node_id or self.type
        self.device = "cpu"
        self.dtype = "float32"
        self.weight_bytes = 0
        """Bytes the loaded weights take on the device; set by `load`."""
        self.progress: tuple[int, int] | None = None
        """(done, total) steps of the call running now, where a long family says (a clip's
        denoising steps): what /health and the console show of a job that takes minutes."""
        self.wanted: frozenset[str] = frozenset(self.outputs)
        """The outputs something reads (a wire or a graph output); `run_batch` may leave the
        others out of its results and skip computing them. The run loop sets it from the
        plan before `load`, so warm-up skips them too; built alone, a node gives them all."""

    @classmethod
    def doc(cls) -> str:
        return (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")

    def models(self) -> list[str]:
        """Model ids or paths this node loads (what `capgraph prepare` fetches): the value of
        each param `weights` names, where it holds an id. Families whose ids live elsewhere
        (a list of ControlNets, an id picked by a method) extend or replace this."""
        fields = type(self.params).model_fields
        ids = [getattr(self.params, name) for name in self.weights if name in fields]
        return list(dict.fromkeys(i for i in ids if isinstance(i, str)))

    @classmethod
    def tiny_models(cls) -> dict[str, Callable[[Path], None]]:
        """Tiny model builders by key: `build(folder)` writes a random-initialised model in
        the real repo's layout (what `capgraph tiny-models` and CAPGRAPH_MODELS=tiny use)."""
        return {w.key: w.tiny for w in cls.weights.values()}

    @classmethod
    def random_models(cls) -> dict[str, Callable[[Path], None]]:
        """Full-size random builders, same keys as `tiny_models()`: the default checkpoint's
        architecture at its real size with random fp16 weights, in the same layout (what
        CAPGRAPH_MODELS=random uses to measure latency and VRAM with no hub access)."""
        return {w.key: w.random for w in cls.weights.values() if w.random is not None}

    def resolve_weights(self, name: str, model: str | None = None) -> str:
        """What `from_pretrained` should load for the weights `name`: `model` (default: the
        param called `name`) as a local folder, a cached hub snapshot or, online and not
        cached, the id itself; in tiny and random modes that entry's own model, whatever
        the id. A missing model raises `engine.weights.ModelMissing` naming this node."""
        return resolve(getattr(self.params, name) if model is None else model, self.node_id, self.weights[name])

    @classmethod
    def check_wiring(cls, params: NodeParams, wired: frozenset[str]) -> list[tuple[str, str]]:
        """Rules that tie params to which optional ports are wired (e.g. one control image
        per ControlNet), checked at validation: (port, problem) pairs; none by default."""
        return []

    @classmethod
    def for_callers(cls, callers: Sequence[tuple[NodeParams, frozenset[str]]]) -> tuple[NodeParams, frozenset[str]]:
        """One node serving several callers that agree on `shared_weights`, from each one's
        (params, wired ports): the params it loads and warms up with, and the ports it
        takes (a frame brings only its caller's). Default: the first caller's params, every
        port one of them wires. Raises ValueError where no one node can serve them all."""
        return callers[0][0], frozenset().union(*(wired for _, wired in callers))

    def load(self, device: str, dtype: str) -> None:
        """Load weights onto `device` in `dtype` ('float16' or 'float32'). Weightless
        families keep this default."""
        self.device, self.dtype = device, dtype

    def warmup(self) -> None:
        """Run one small batch so kernels, caches and lazy imports are ready."""
        self.run_batch([self.example_inputs()], [self.params])

    def example_inputs(self) -> Frame:
        """Small valid inputs for warm-up and tests; families override where shapes matter."""
        return {name: example_value(p.type) for name, p in self.inputs.items() if not p.optional}

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[NodeParams]) -> list[Frame]:
        """Process a batch of frames: one dict of port values per frame in, one dict of
        output port values per frame out, in the same order. `params[i]` are frame i's
        params (requests may override `request_params`). Outputs not in `self.wanted`
        may be left out: nothing reads them."""
        raise NotImplementedError(f"node family '{self.type}' does not implement run_batch")


def example_value(kind: PortType, size: int = 64) -> Any:
    """A small, valid value of a port type (a grey gradient for images)."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :].repeat(size, axis=0)
    ramp_image = np.stack([ramp * 255, ramp.T * 255, np.full_like(ramp, 128)], axis=-1).astype(np.uint8)
    examples: dict[PortType, Any] = {
        PortType.IMAGE: ramp_image,
        PortType.MASK: (ramp > 0.5).astype(np.float32),
        PortType.DEPTH_MAP: ramp,
        PortType.SEGMENTATION_MAP: (ramp > 0.5).astype(np.int32),
        PortType.MASKS: {
            "masks": (ramp > 0.5).astype(np.float32)[None],
            "scores": np.ones(1, np.float32),
            "logits": np.zeros((1, size, size), np.float32),
        },
        PortType.POINTS: [[size / 2, size / 2, 1]],
        PortType.BOXES: [[size / 4, size / 4, 3 * size / 4, 3 * size / 4]],
        PortType.TEXT: "warm-up",
        PortType.NUMBER: 0.5,
        PortType.INTEGER: 1,
        PortType.BOOL: True,
        PortType.BYTES: b"",
        PortType.VIDEO: Video(np.stack([ramp_image, ramp_image[::-1]]), 8.0),
    }
    return examples[kind]
