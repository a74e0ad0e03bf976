"""The settings every replica needs, wherever Ray places it.

A Ray worker inherits the environment of whatever started its machine's raylet (`ray
start` on that machine, a Kubernetes pod spec), not of the `capgraph serve` or `serve
deploy` that deployed the graph. Left so, a replica on another machine never sees
`CAPGRAPH_MODELS=tiny` or `HF_HUB_OFFLINE=1`, tries to download the real model, and the
capability stays unhealthy. So the builder copies the variables capgraph and the
libraries under it read into each deployment's `runtime_env`; Ray merges them into the
application's own `runtime_env.env_vars` (those of a Serve config win nothing here: the
builder runs inside that runtime_env, so it sees and forwards them too).

Secrets among them (the bearer token, the orchestrator secret) travel the same way: a
replica needs them. They are visible to whoever can read the cluster's Serve config,
which Ray's token authentication guards. The KubeRay manifest never writes them inline
(`serve.operate.kuberay`): it refers to a Kubernetes Secret instead.
"""

import os
import re
from collections.abc import Mapping
from typing import Any

PREFIXES = ("CAPGRAPH_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "LIVEPEER_")
"""capgraph's own settings, Hugging Face's offline and cache settings, the Livepeer glue's."""
NAMES = ("TORCH_HOME", "PYTORCH_CUDA_ALLOC_CONF", "TOKENIZERS_PARALLELISM")
SECRET = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|KEY)($|_)")
"""Names whose values are secrets: never written into a manifest."""


def forwarded(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of `environ` (default: this process's) that replicas must see, sorted."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k.startswith(PREFIXES) or k in NAMES}


def is_secret(name: str) -> bool:
    return bool(SECRET.search(name))


def with_forwarded(actor_options: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`ray_actor_options` with the forwarded variables added to its `runtime_env`."""
    env = forwarded(environ)
    if not env:
        return actor_options
    runtime_env = dict(actor_options.get("runtime_env") or {})
    runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
    return {**actor_options, "runtime_env": runtime_env}
