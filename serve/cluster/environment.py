"""The settings every replica needs, wherever Ray places it.

A Ray worker inherits its raylet's environment, not the deploying shell's, so the builder
copies the variables capgraph and its libraries read (secrets included) into each
deployment's `runtime_env`. docs/cluster.md ("Settings travel with the application").
"""

import os
import re
from collections.abc import Mapping
from typing import Any

PREFIXES = ("CAPGRAPH_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "LIVEPEER_")
"""capgraph's own settings, Hugging Face's offline and cache settings, the Livepeer glue's."""
NAMES = ("TORCH_HOME", "PYTORCH_CUDA_ALLOC_CONF", "TOKENIZERS_PARALLELISM")
SERVE_SETTINGS = {"RAY_max_direct_call_object_size": str(1 << 20)}
"""Ray's own settings for capgraph's replica processes; a value set where the application is
built wins. A value up to 1 MiB (a 576 px RGB frame) travels inside the call's own message
instead of through the object store: Ray's default of 100 KiB sent a 256 px frame's answer
through a store write, a seal and a fetch, and a hop with such an answer took 17 to 23 ms
instead of 10 to 11 (the median of 300, measured side by side under load). Bigger frames
still go through the store, where a reader maps them without a copy.

Ray Serve's one-event-loop switches (`RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0`,
`RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0`) were tried and left out: their gain was within
the machine's noise, and with them a replaced hung replica was reported replaced twice."""
SECRET = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|KEY)($|_)")
"""Names whose values are secrets: never written into a manifest."""


def forwarded(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of `environ` (default: this process's) that replicas must see, sorted."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k.startswith(PREFIXES) or k in NAMES or k in SERVE_SETTINGS}


def is_secret(name: str) -> bool:
    return bool(SECRET.search(name))


def with_forwarded(actor_options: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`ray_actor_options` with the forwarded variables and `SERVE_SETTINGS` added to its `runtime_env`."""
    env = SERVE_SETTINGS | forwarded(environ)
    runtime_env = dict(actor_options.get("runtime_env") or {})
    runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
    return {**actor_options, "runtime_env": runtime_env}
