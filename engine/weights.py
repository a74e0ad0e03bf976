"""The weights contract: where a model node's weights come from (a local folder, the Hugging
Face cache, or the tiny and full-size random models a family builds itself), chosen for
every node at once by `CAPGRAPH_MODELS` (unset, `tiny` or `random`).

A family declares each model once, as a `Weights` entry (`Node.weights`); `resolve` gives
the folder `load` reads. Engine-owned: serve and the CLI read it without the nodes.
"""

import fcntl
import gc
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capgraph.engine.node import Node

MODELS_ENV = "CAPGRAPH_MODELS"
TINY_DIR_ENV = "CAPGRAPH_TINY_DIR"
RANDOM_DIR_ENV = "CAPGRAPH_RANDOM_DIR"
MODEL_DIR_ENV = "CAPGRAPH_MODEL_DIR"
TINY_FORMAT = "2"
"""Bumped when a tiny builder changes, so stale cached tiny models are rebuilt."""
RANDOM_FORMAT = "1"
"""Bumped when a full-size random builder changes."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
"""Weight files, in the order loaders prefer them within a folder."""
FP16_FILE = re.compile(r"\.fp16(-\d+-of-\d+)?\.safetensors$")
"""A diffusers fp16 variant file: `x.fp16.safetensors`, or a shard `x.fp16-00001-of-00002.safetensors`."""


@dataclass(frozen=True)
class Weights:
    """One model a family loads, declared once on the class (`Node.weights`)."""

    key: str
    """Names the model in tiny and random modes: its folder under the tiny and random roots."""
    default: str | None
    """The hub id the param defaults to; None where the param has no default."""
    tiny: Callable[[Path], None]
    """`tiny(folder)` writes a tiny random-initialised model in the real repo's layout."""
    random: Callable[[Path], None] | None = None
    """`random(folder)` writes the default's architecture at full size with random fp16
    weights, in the same layout; None: CAPGRAPH_MODELS=random cannot run this model."""


class ModelMissing(RuntimeError):
    """A model a node needs is not on this machine and the hub may not be used."""

    def __init__(
        self, node_id: str, model: str, detail: str = "", offline: bool = True, unreachable: str | None = None
    ):
        self.node_id, self.model = node_id, model
        where = "is not in the local cache and HF_HUB_OFFLINE is set" if offline else "cannot be found"
        if unreachable:
            where = (
                "is not in the local cache and the Hugging Face hub cannot be reached "
                f"from this machine ({unreachable})"
            )
        fix = "Fetch it first with: capgraph prepare <graph.yaml>" if offline else "Fix the path or id in the graph"
        super().__init__(
            f"node '{node_id}': model '{model}' {where}{detail}. "
            f"{fix} (or set {MODELS_ENV}=tiny to run on tiny test models)."
        )


def models_mode() -> str:
    mode = os.environ.get(MODELS_ENV, "").strip().lower()
    if mode not in ("", "tiny", "random"):
        raise ValueError(f"{MODELS_ENV} must be unset, 'tiny' or 'random', not '{mode}'")
    return mode


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def model_dir() -> str | None:
    return os.environ.get(MODEL_DIR_ENV) or None


def tiny_root() -> Path:
    root = os.environ.get(TINY_DIR_ENV) or Path.home() / ".cache" / "capgraph" / "tiny"
    return Path(root) / f"v{TINY_FORMAT}"


def random_root(base: Path | str | None = None) -> Path:
    """Where full-size random models live: `base`, else `CAPGRAPH_RANDOM_DIR`, else
    `~/.cache/capgraph/random`, with the format version appended."""
    root = base or os.environ.get(RANDOM_DIR_ENV) or Path.home() / ".cache" / "capgraph" / "random"
    return Path(root).expanduser() / f"v{RANDOM_FORMAT}"


def tiny_model(key: str, build: Callable[[Path], None], root: Path | None = None) -> Path:
    """The folder of tiny model `key` under `root` (default `tiny_root()`), built with
    `build(folder)` on first use.

    Built in a temporary sibling folder and renamed into place, so concurrent replicas
    or test workers never see half-written weights.
    """
    target = (root or tiny_root()) / key
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        build(staging)
        (staging / ".complete").write_text(TINY_FORMAT)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: theirs is as good as ours
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def random_model(key: str, build: Callable[[Path], None], root: Path | None = None) -> Path:
    """The folder of full-size random model `key` under `root` (default `random_root()`),
    built once. Replicas starting together wait on a file lock rather than each building
    gigabytes of the same weights. A build made here hands its GPU memory back, so a
    replica's memory figures show the node, not the builder."""
    root = root or random_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = not (root / key / ".complete").exists()
        folder = tiny_model(key, build, root)
    torch = sys.modules.get("torch")
    if built and torch is not None and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()
    return folder


def resolve(model: str, node_id: str, weights: Weights) -> str:
    """The local folder (or, online, the id) that `from_pretrained` should load for a node's
    `model`; in tiny and random modes the folder of `weights`' own model, whatever `model` is."""
    mode = models_mode()
    if mode == "tiny":
        return str(tiny_model(weights.key, weights.tiny))
    if mode == "random":
        if weights.random is None:
            raise KeyError(
                f"node '{node_id}': {MODELS_ENV}=random, but no node family declares a full-size random "
                f"model '{weights.key}' (Weights.random)"
            )
        return str(random_model(weights.key, weights.random))
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(model, cache_dir=model_dir(), local_files_only=True)
    except HFValidationError as exc:  # neither an existing folder nor a possible hub id
        raise ModelMissing(
            node_id, model, "; it is not an existing local path nor a valid Hugging Face id", offline=False
        ) from exc
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        if offline():
            raise ModelMissing(node_id, model) from exc
        unreachable = hub_unreachable()
        if unreachable:  # else from_pretrained retries for minutes, and Ray retries the replica after it
            raise ModelMissing(node_id, model, unreachable=unreachable) from exc
        return model  # online and not cached: from_pretrained downloads it


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face hub (`HF_ENDPOINT`) cannot be reached from here, or None
    where a TCP connection to it opens within `timeout_s`."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    return None


def split_weights(model: str) -> tuple[str, str | None]:
    """`owner/repo/sub/file.pth` -> (`owner/repo`, `sub/file.pth`); a repo id or a local
    path -> (it, None)."""
    parts = model.split("/")
    local = model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()
    if not local and len(parts) > 2 and model.endswith(WEIGHT_SUFFIXES):
        return "/".join(parts[:2]), "/".join(parts[2:])
    return model, None


def write_random_models(
    folder: Path | str, families: Iterable["type[Node]"], keys: Iterable[str] | None = None
) -> dict[str, str]:
    """Write the full-size random model of every one of `families` (the catalogue's, say),
    or only those of `keys`, under `folder`, where `CAPGRAPH_RANDOM_DIR=folder` finds them;
    key -> model folder. Models already there are kept. What `capgraph random-models DIR` runs."""
    builders = {key: build for family in families for key, build in family.random_models().items()}
    wanted = list(builders) if keys is None else list(keys)
    unknown = sorted(set(wanted) - set(builders))
    if unknown:
        raise KeyError(f"no random model for {unknown}; known keys: {sorted(builders)}")
    root = random_root(folder)
    return {key: str(random_model(key, builders[key], root=root)) for key in wanted}
