"""The graph file's `livepeer:` section: how a served graph meets the Livepeer network.

Every key can be overridden from the environment (`CAPGRAPH_LIVEPEER__<KEY>`); secrets
never come from the file. docs/livepeer.md has the section's keys.
"""

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from capgraph.engine.plan import Plan
from capgraph.engine.spec import CAPABILITY
from capgraph.engine.types import PortType
from capgraph.engine.yamlload import plain

ENV_PREFIX = "CAPGRAPH_LIVEPEER__"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
SECRET_WORDS = ("secret", "token", "password", "key")
"""Field names refused with a pointer to the environment instead of a generic message."""

AiRoute = Literal["text-to-image", "image-to-image", "upscale", "segment-anything-2", "image-to-text", "image-to-video"]

# Request fields of each ai-runner route (ai-runner runner/routes/*.py @50a742ce) plus the
# response field a graph output fills. A route mapping may name only these.
ROUTE_FIELDS: dict[str, dict[str, str]] = {
    "text-to-image": {
        "prompt": "text",
        "model_id": "text",
        "loras": "text",
        "height": "integer",
        "width": "integer",
        "guidance_scale": "number",
        "negative_prompt": "text",
        "safety_check": "bool",
        "seed": "integer",
        "num_inference_steps": "integer",
        "num_images_per_prompt": "integer",
    },
    "image-to-image": {
        "image": "image",
        "prompt": "text",
        "model_id": "text",
        "loras": "text",
        "strength": "number",
        "guidance_scale": "number",
        "image_guidance_scale": "number",
        "negative_prompt": "text",
        "safety_check": "bool",
        "seed": "integer",
        "num_inference_steps": "integer",
        "num_images_per_prompt": "integer",
    },
    "upscale": {
        "image": "image",
        "prompt": "text",
        "model_id": "text",
        "safety_check": "bool",
        "seed": "integer",
        "num_inference_steps": "integer",
    },
    "segment-anything-2": {
        "image": "image",
        "model_id": "text",
        "point_coords": "points",
        "point_labels": "labels",
        "box": "boxes",
        "multimask_output": "bool",
        "return_logits": "bool",
        "normalize_coords": "bool",
    },
    "image-to-text": {"image": "image", "prompt": "text", "model_id": "text"},
    "image-to-video": {
        "image": "image",
        "model_id": "text",
        "height": "integer",
        "width": "integer",
        "fps": "integer",
        "motion_bucket_id": "integer",
        "noise_aug_strength": "number",
        "safety_check": "bool",
        "seed": "integer",
        "num_inference_steps": "integer",
    },
}
RESPONSE_FIELD = {
    "text-to-image": "images",
    "image-to-image": "images",
    "upscale": "images",
    "segment-anything-2": "masks",
    "image-to-text": "text",
    "image-to-video": "frames",
}

NSFW_FIELD = "nsfw"
"""The per-image response field of the image routes a Bool graph output may answer (a
safety checker's verdict). Unmapped, answers say `nsfw: false` marked unchecked (ai_runner.py)."""
NSFW_ROUTES = frozenset({"text-to-image", "image-to-image", "upscale", "image-to-video"})
"""The routes whose answers carry one `nsfw` per image (ImageResponse) or per frame (image-to-video's)."""

# Which graph types a request field of each kind may feed, and which a response may read.
_INPUT_TYPES: dict[str, set[PortType]] = {
    "image": {PortType.IMAGE, PortType.BYTES},
    "text": {PortType.TEXT},
    "integer": {PortType.INTEGER, PortType.NUMBER},
    "number": {PortType.NUMBER},
    "bool": {PortType.BOOL},
    "points": {PortType.POINTS},
    "boxes": {PortType.BOXES},
    "labels": set(),  # only ever a node param (e.g. sam.point_labels): a Points input carries its labels
}
_OUTPUT_TYPES: dict[str, set[PortType]] = {
    "images": {PortType.IMAGE, PortType.DEPTH_MAP, PortType.MASK, PortType.BYTES},
    "masks": {PortType.MASKS},
    "text": {PortType.TEXT},
    "frames": {PortType.VIDEO},
}
LIVE_OUTPUT_TYPES = {PortType.IMAGE, PortType.DEPTH_MAP, PortType.MASK}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ByocSettings(_Strict):
    """BYOC registration (go-livepeer `byoc/`, v0.8.6 to v0.9.1; being replaced by the Live Runner)."""

    orchestrator: str | None = Field(
        None, pattern=r"^https?://", description="orchestrator base URL, e.g. https://orch:8935"
    )
    price_per_unit: int = Field(0, ge=0, le=10**18, description="wei per second of compute (numerator)")
    price_scaling: int = Field(1, ge=1, le=10**18, description="denominator of price_per_unit")
    interval_s: float = Field(
        30.0, ge=1.0, le=3600.0, description="re-register this often (the orchestrator forgets on restart)"
    )


class RunnerSettings(_Strict):
    """Live Runner registration over `POST /runners/heartbeat` (go-livepeer v0.9.0+)."""

    orchestrator: str | None = Field(None, pattern=r"^https?://", description="orchestrator base URL")
    app: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^\S(.*\S)?$",
        description="app name; default 'capgraph/<capability>'",
    )
    mode: Literal["single-shot", "persistent"] = "single-shot"
    price: float = Field(0.0, ge=0.0, le=1e9, description="price per unit (on-chain orchestrators need > 0)")
    currency: Literal["usd"] = "usd"
    unit: Literal["hour", "720p", "fixed"] = "hour"
    label: str = Field("", max_length=200)
    interval_s: float = Field(5.0, ge=0.2, le=60.0, description="heartbeat period when the orchestrator names none")
    health_url: str = Field("/ready", description="what a static runners.json entry tells the orchestrator to poll")


class LiveSettings(_Strict):
    """Live frames through pytrickle: which graph input takes a frame, which output goes back."""

    input: str = Field(description="graph input (Image) each video frame goes to")
    output: str = Field(description="graph output (Image, DepthMap or Mask) published as the frame")
    params: dict[str, str] = Field(
        default_factory=dict, description="stream param name -> graph input, graph param or node.param"
    )
    max_batch: int = Field(4, ge=1, le=64, description="most frames run together when they arrive together")
    max_streams: int = Field(8, ge=1, le=256, description="concurrent streams one ingress runs; the next gets 503")
    skip_similar: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="reuse the stream's previous output when a frame differs from the previous one by less than "
        "this mean absolute difference (0 to 1 scale); 0: off (StreamDiffusion's similar-image filter)",
    )


class LivepeerSettings(_Strict):
    """The `livepeer:` section after environment overrides, with defaults filled from the graph."""

    capability: str | None = Field(None, pattern=CAPABILITY, description="BYOC capability name and job route")
    description: str = Field("", max_length=1000)
    url: str | None = Field(None, pattern=r"^https?://", description="base URL the orchestrator forwards to")
    capacity: int = Field(1, ge=1, le=1024, description="in-flight jobs before 503 busy")
    secret_env: str = Field(
        "LIVEPEER_ORCH_SECRET", pattern=ENV_NAME, description="env var holding the orchestrator secret"
    )
    token_env: str = Field(
        "CAPGRAPH_AUTH_TOKEN", pattern=ENV_NAME, description="env var holding the bearer token jobs must carry"
    )
    verify_tls: bool = Field(
        False, description="check the orchestrator's TLS certificate (go-livepeer's is self-signed)"
    )
    probe_s: float = Field(
        2.0, ge=0.2, le=60.0, description="how often the registrar checks the orchestrator is still up"
    )
    model_id: str = Field(
        "", max_length=300, description="ai-runner model_id this service answers for; '' = the capability"
    )
    byoc: ByocSettings | None = None
    runner: RunnerSettings | None = None
    routes: dict[AiRoute, dict[str, str]] = Field(default_factory=dict)
    live: LiveSettings | None = None

    @property
    def name(self) -> str:
        """The capability name (filled in by `load_settings`)."""
        return self.capability or ""

    def token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The bearer token jobs must carry, from the environment; None when unset."""
        return (environ if environ is not None else os.environ).get(self.token_env) or None

    def orch_secret(self, environ: Mapping[str, str] | None = None) -> str | None:
        return (environ if environ is not None else os.environ).get(self.secret_env) or None


# -- reading -------------------------------------------------------------------------------


def with_env(raw: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The section with `CAPGRAPH_LIVEPEER__A__B=value` overrides applied (JSON values parsed)."""
    import json

    environ = os.environ if environ is None else environ
    section = plain(raw or {})
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        text = environ[name]
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        target = section
        for step in path[:-1]:
            if not isinstance(target.get(step), dict):
                target[step] = {}
            target = target[step]
        target[path[-1]] = value
    return section


def load_settings(
    plan: Plan, raw: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> LivepeerSettings:
    """Validate the section (after env overrides) against the plan and fill defaults.

    Raises ValueError listing every problem (never a secret's value)."""
    section = with_env(raw, environ)
    problems = check_livepeer_section(section, plan)
    if problems:
        raise ValueError("invalid livepeer section:\n" + "\n".join(problems))
    settings = LivepeerSettings.model_validate(section)
    fills: dict[str, Any] = {}
    if settings.capability is None:
        fills["capability"] = plan.capability
    if not settings.description:
        fills["description"] = plan.spec.description
    capability = settings.capability or plan.capability
    if not settings.model_id:
        fills["model_id"] = capability
    if settings.runner is not None and settings.runner.app is None:
        fills["runner"] = settings.runner.model_copy(update={"app": f"capgraph/{capability}"})
    return settings.model_copy(update=fills)


def read_section(path: str | Path) -> dict[str, Any]:
    """The raw `livepeer:` section of a graph file ({} when it has none)."""
    from capgraph.engine.yamlload import load_yaml

    tree = load_yaml(Path(path).read_text(encoding="utf-8"))
    section = tree.get("livepeer") if isinstance(tree, Mapping) else None
    return plain(section) if isinstance(section, Mapping) else {}


def settings_from_file(path: str | Path, plan: Plan, environ: Mapping[str, str] | None = None) -> LivepeerSettings:
    return load_settings(plan, read_section(path), environ)


# -- checking ------------------------------------------------------------------------------


def check_livepeer_section(raw: Any, plan: Plan | None = None) -> list[str]:
    """Every problem in a `livepeer:` section, as `livepeer.<path>: <what is wrong>` lines.

    With a plan, also checks that routes and live settings name real graph inputs,
    settable params and outputs of fitting types. Values are never echoed: a misplaced
    secret must not end up in a log.
    """
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return ["livepeer: must be a mapping of settings."]
    problems: list[str] = []
    try:
        settings = LivepeerSettings.model_validate(plain(raw))
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(["livepeer", *(str(p) for p in err["loc"] if p != "[key]")])
            last = str(err["loc"][-1]) if err["loc"] else ""
            if err["type"] == "extra_forbidden" and any(w in last.lower() for w in SECRET_WORDS):
                problems.append(
                    f"{where}: secrets are never read from the graph file; put it in the environment "
                    "variable named by 'secret_env' (orchestrator secret) or 'token_env' (bearer token)."
                )
            elif err["type"] == "extra_forbidden":
                problems.append(f"{where}: unknown field.")
            else:
                problems.append(f"{where}: {err['msg']}.")
        return problems
    if plan is not None:
        problems += _check_against_plan(settings, plan)
    return problems


def _check_against_plan(settings: LivepeerSettings, plan: Plan) -> list[str]:
    problems: list[str] = []
    inputs = plan.spec.inputs
    for route, mapping in settings.routes.items():
        fields = ROUTE_FIELDS[route]
        response = RESPONSE_FIELD[route]
        fed: set[str] = set()
        for field, target in mapping.items():
            where = f"livepeer.routes.{route}.{field}"
            if field == response:
                if target not in plan.outputs:
                    problems.append(
                        f"{where}: '{target}' is not a graph output; outputs are {', '.join(plan.outputs)}."
                    )
                elif plan.output_type(target) not in _OUTPUT_TYPES[response]:
                    problems.append(
                        f"{where}: output '{target}' is {plan.output_type(target).title}; "
                        f"'{response}' needs {_titles(_OUTPUT_TYPES[response])}."
                    )
                continue
            if field == NSFW_FIELD and route in NSFW_ROUTES:
                problems += _check_nsfw(where, target, plan)
                continue
            if field not in fields:
                answers = f"'{response}' for the output"
                if route in NSFW_ROUTES:
                    answers = f"'{response}' and '{NSFW_FIELD}' for outputs"
                problems.append(
                    f"{where}: '{route}' has no request field '{field}'; fields are {', '.join(sorted(fields))} "
                    f"(and {answers})."
                )
                continue
            problems += _check_target(
                where, target, _INPUT_TYPES[fields[field]], plan, allow_params=fields[field] != "image"
            )
            if target in inputs:
                fed.add(target)
        if response not in mapping and len(_outputs_of(plan, _OUTPUT_TYPES[response])) != 1:
            problems.append(
                f"livepeer.routes.{route}: name the graph output that answers '{response}' "
                f"(e.g. {response}: <output>); the graph has "
                f"{len(_outputs_of(plan, _OUTPUT_TYPES[response]))} of a fitting type."
            )
        if route in NSFW_ROUTES and NSFW_FIELD not in mapping:
            problems += _unmapped_checker(route, plan)
        for name, spec in inputs.items():
            if spec.required and name not in fed:
                problems.append(f"livepeer.routes.{route}: required graph input '{name}' is fed by no request field.")
    if settings.live is not None:
        live = settings.live
        if live.input not in inputs:
            problems.append(
                f"livepeer.live.input: '{live.input}' is not a graph input; inputs are {', '.join(inputs) or '(none)'}."
            )
        elif inputs[live.input].type is not PortType.IMAGE:
            problems.append(
                f"livepeer.live.input: input '{live.input}' is {inputs[live.input].type.title}; frames are Images."
            )
        if live.output not in plan.outputs:
            problems.append(
                f"livepeer.live.output: '{live.output}' is not a graph output; outputs are {', '.join(plan.outputs)}."
            )
        elif plan.output_type(live.output) not in LIVE_OUTPUT_TYPES:
            problems.append(
                f"livepeer.live.output: output '{live.output}' is {plan.output_type(live.output).title}; "
                f"a frame needs {_titles(LIVE_OUTPUT_TYPES)}."
            )
        every = set(PortType) - {PortType.IMAGE, PortType.MASKS, PortType.VIDEO}
        for name, target in live.params.items():
            problems += _check_target(f"livepeer.live.params.{name}", target, every, plan, allow_params=True)
        mapped = set(live.params.values()) | {live.input}
        for name, spec in inputs.items():
            if spec.required and name not in mapped:
                problems.append(
                    f"livepeer.live: required graph input '{name}' gets no value; "
                    "give it a default or map a stream param to it."
                )
    return problems


def _check_nsfw(where: str, target: str, plan: Plan) -> list[str]:
    if target not in plan.outputs:
        return [f"{where}: '{target}' is not a graph output; outputs are {', '.join(plan.outputs)}."]
    if plan.output_type(target) is not PortType.BOOL:
        return [f"{where}: output '{target}' is {plan.output_type(target).title}; '{NSFW_FIELD}' needs Bool."]
    return []


def _checkers(plan: Plan) -> list[str]:
    """`node.nsfw` of every node with a Bool `nsfw` output: the graph's safety checkers."""
    return [
        f"{node.id}.{NSFW_FIELD}"
        for node in plan.nodes.values()
        if NSFW_FIELD in node.family.outputs and node.family.outputs[NSFW_FIELD].type is PortType.BOOL
    ]


def _unmapped_checker(route: str, plan: Plan) -> list[str]:
    """A graph with a safety checker whose route leaves `nsfw` unmapped would answer
    'unchecked' while a check ran: refused, naming the output to map."""
    checkers = _checkers(plan)
    if not checkers:
        return []
    exposed = [name for name, source in plan.outputs.items() if str(source) in checkers]
    fix = (
        f"map it (nsfw: {exposed[0]})"
        if exposed
        else f"add a graph output for {checkers[0]} and map it (nsfw: <output>)"
    )
    return [
        f"livepeer.routes.{route}: the graph has a safety checker ({', '.join(checkers)}) but '{NSFW_FIELD}' "
        f"is not mapped, so answers would say unchecked; {fix}."
    ]


def nsfw_output(settings: "LivepeerSettings", route: str) -> str | None:
    """The graph output that answers a route's `nsfw`, None where none is mapped."""
    return settings.routes.get(route, {}).get(NSFW_FIELD) if route in NSFW_ROUTES else None  # type: ignore[call-overload]


def _check_target(where: str, target: str, types: set[PortType], plan: Plan, *, allow_params: bool) -> list[str]:
    inputs = plan.spec.inputs
    if target in inputs:
        if inputs[target].type not in types:
            return [
                f"{where}: graph input '{target}' is {inputs[target].type.title}; this field needs {_titles(types)}."
            ]
        return []
    if allow_params and target in plan.switches:  # a Bool that turns nodes on or off (`when:`)
        if PortType.BOOL not in types:
            return [f"{where}: '{target}' is a switch (a Bool); this field needs {_titles(types)}."]
        return []
    if allow_params and target in plan.request_params():  # a graph-level param or a settable node.param
        return []
    if "." in target and allow_params:
        settable = ", ".join(plan.request_params()) or "(none)"
        return [f"{where}: '{target}' is not a param a request may set; settable: {settable}."]
    kinds = "a graph input, a graph param or a settable node.param" if allow_params else "a graph input"
    return [f"{where}: '{target}' is not {kinds}; inputs are {', '.join(inputs) or '(none)'}."]


def _outputs_of(plan: Plan, types: set[PortType]) -> list[str]:
    return [name for name in plan.outputs if plan.output_type(name) in types]


def _titles(types: set[PortType]) -> str:
    return " or ".join(sorted(t.title for t in types)) or "a node param, not a graph input"


def default_output(plan: Plan, route: str, settings: LivepeerSettings) -> str:
    """The graph output that answers a route: the mapped one, else the only one that fits."""
    response = RESPONSE_FIELD[route]
    mapped = settings.routes.get(route, {}).get(response)  # type: ignore[call-overload]
    return mapped or _outputs_of(plan, _OUTPUT_TYPES[response])[0]


def route_name(route: str) -> str:
    """`image-to-image` -> `ImageToImage` (how ai-runner names a pipeline in errors)."""
    return "".join(part.capitalize() for part in re.split(r"[-_]", route))
