"""What `capgraph prepare` fetches of a model: the files a node loads, not the whole repo.

`wanted_files` keeps configs and the weights of the wanted variant (fp16, fp32 or all),
skipping duplicates and exports for other runtimes, so SDXL base is under 7 GB, not 70 GB.
docs/models.md has the rules.
"""

import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Literal

from capgraph.engine.weights import FP16_FILE, WEIGHT_SUFFIXES, model_dir, split_weights

Variant = Literal["fp16", "fp32", "all"]

CONFIG_SUFFIXES = (".json", ".txt", ".model", ".yaml", ".yml", ".tiktoken")
EXPORT_FOLDERS = frozenset({"onnx", "openvino", "coreml", "flax", "tf", "tflite", "mlpackage"})
EXPORT_SUFFIXES = (".onnx", ".onnx_data", ".msgpack", ".h5", ".tflite", ".ckpt", ".gguf", ".xml", ".mlmodel", ".pb")


def default_variant() -> Variant:
    """fp16 where this machine has a CUDA GPU (what its replicas load), else fp32."""
    try:
        import torch

        return "fp16" if torch.cuda.is_available() else "fp32"
    except ImportError:
        return "fp32"


def wanted_files(files: Iterable[str], variant: Variant, components: Iterable[str] | None = None) -> list[str]:
    """The files of a repo (paths as the hub lists them) a node needs. `components`: the
    folder names a diffusers `model_index.json` lists (None: not a pipeline repo)."""
    keep: list[str] = []
    weights: dict[str, list[str]] = {}
    pipeline = set(components) if components is not None else None
    for name in files:
        path = PurePosixPath(name)
        if EXPORT_FOLDERS & set(path.parts[:-1]) or name.endswith(EXPORT_SUFFIXES):
            continue
        folder = str(path.parent) if len(path.parts) > 1 else ""
        if name.endswith(WEIGHT_SUFFIXES):
            if pipeline is not None and (folder == "" or path.parts[0] not in pipeline):
                continue  # a single-file checkpoint at the root, or a folder the pipeline never loads
            weights.setdefault(folder, []).append(name)
        elif name.endswith(CONFIG_SUFFIXES) and (pipeline is None or folder == "" or path.parts[0] in pipeline):
            keep.append(name)
    for names in weights.values():
        keep += _weights_of_folder(names, variant)
    return sorted(keep)


def _weights_of_folder(names: list[str], variant: Variant) -> list[str]:
    safetensors = [n for n in names if n.endswith(".safetensors")]
    if not safetensors:
        return names  # .bin / .pt / .pth only: all of them (their names say nothing of precision)
    if variant == "all":
        return safetensors
    half = [n for n in safetensors if FP16_FILE.search(n)]
    full = [n for n in safetensors if not FP16_FILE.search(n)]
    if variant == "fp16":
        return half or full
    return full or half


def prepare(model: str, cache_dir: str | None = None, variant: Variant | None = None) -> str:
    """Download what a node loads of one model into the cache (with progress bars) and
    return its local folder; a local path is kept as it is."""
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    cache = cache_dir or model_dir()
    repo, file = split_weights(model)
    if file is not None:
        return str(Path(hf_hub_download(repo, file, cache_dir=cache)).parent)
    files = HfApi().list_repo_files(repo)
    components = None
    if "model_index.json" in files:
        index = json.loads(Path(hf_hub_download(repo, "model_index.json", cache_dir=cache)).read_text())
        components = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)]
    allow = wanted_files(files, variant or default_variant(), components)
    return snapshot_download(
        repo, cache_dir=cache, allow_patterns=allow or None, max_workers=min(8, os.cpu_count() or 1)
    )
