"""Per-node latency at batch 1 and batch 4, and what batching buys, for every model family.

Each family is loaded once (tiny random-initialised models by default, so it runs on any
CPU), warmed, then timed side by side in one run: a batch of 1 and a batch of 4 frames,
interleaved. Prints ms per call, ms per frame and the batching speed-up (frames/s at
batch 4 over frames/s at batch 1), plus the bytes of weights each node holds on its
device. On a GPU it also prints peak VRAM per node.

    CAPGRAPH_MODELS=tiny python benchmarks/nodes.py [--rounds 10] [--size 128] [--json]

Without CAPGRAPH_MODELS=tiny the nodes load the real checkpoints they name (prepare them
first with `capgraph prepare`).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from capgraph.engine.node import Node, example_value  # noqa: E402
from capgraph.engine.registry import catalogue  # noqa: E402
from capgraph.engine.types import PortType  # noqa: E402

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "depth": ("depth", {}),
    "segmentation": ("segmentation", {}),
    "sam2": ("sam2", {}),
    "sdxl t2i 2 steps": ("sdxl", {"steps": 2, "width": 64, "height": 64}),
    "sdxl controlnet 2 steps": (
        "sdxl",
        {"steps": 2, "width": 64, "height": 64, "controlnets": [{"model": "diffusers/controlnet-depth-sdxl-1.0"}]},
    ),
    "upscale esrgan": ("upscale", {"method": "esrgan"}),
    "upscale sd_x4 2 steps": ("upscale", {"method": "sd_x4", "steps": 2}),
}


def frames_for(node: Node, size: int, count: int) -> list[dict[str, Any]]:
    frame = node.example_inputs()
    for name, _value in list(frame.items()):
        if node.inputs[name].type is PortType.IMAGE:
            frame[name] = example_value(PortType.IMAGE, size)
    return [dict(frame) for _ in range(count)]


def measure(
    name: str, family_id: str, params: dict[str, Any], size: int, rounds: int, device: str, dtype: str
) -> dict[str, Any]:
    family = catalogue()[family_id]
    node = family(family.Params(**params), family_id)
    start = time.perf_counter()
    node.load(device, dtype)
    node.warmup()
    load_s = time.perf_counter() - start
    one, four = frames_for(node, size, 1), frames_for(node, size, 4)
    vram = None
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    b1, b4 = [], []
    for _ in range(rounds):
        for batch, sink in ((one, b1), (four, b4)):
            begin = time.perf_counter()
            node.run_batch(batch, [node.params] * len(batch))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            sink.append(time.perf_counter() - begin)
    if device.startswith("cuda"):
        vram = torch.cuda.max_memory_allocated()
    t1, t4 = statistics.median(b1), statistics.median(b4)
    return {
        "node": name,
        "load_s": round(load_s, 2),
        "b1_ms": round(t1 * 1e3, 2),
        "b4_ms": round(t4 * 1e3, 2),
        "b4_ms_per_frame": round(t4 * 1e3 / 4, 2),
        "batching_speedup": round(4 * t1 / t4, 2),
        "weight_bytes": node.weight_bytes,
        "peak_vram_bytes": vram,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="side of the input frames in pixels")
    parser.add_argument("--only", nargs="*", help="case names to run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    device, dtype = ("cuda", "float16") if torch.cuda.is_available() else ("cpu", "float32")
    rows = []
    for name, (family_id, params) in CASES.items():
        if args.only and name not in args.only:
            continue
        if not args.json:
            print(f"  {name}…", file=sys.stderr, flush=True)
        rows.append(measure(name, family_id, params, args.size, args.rounds, device, dtype))
    report = {
        "device": device,
        "dtype": dtype,
        "models": os.environ.get("CAPGRAPH_MODELS", "real"),
        "size": args.size,
        "nodes": rows,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"\n{device} {dtype}, {report['models']} models, {args.size} px frames, "
        f"median of {args.rounds} interleaved rounds"
    )
    header = f"{'node':<26}{'load s':>8}{'b1 ms':>9}{'b4 ms':>9}{'b4 ms/frame':>13}{'speed-up':>10}{'weights MB':>12}"
    if device.startswith("cuda"):
        header += f"{'peak VRAM MB':>14}"
    print(header)
    for r in rows:
        line = (
            f"{r['node']:<26}{r['load_s']:>8.2f}{r['b1_ms']:>9.2f}{r['b4_ms']:>9.2f}{r['b4_ms_per_frame']:>13.2f}"
            f"{r['batching_speedup']:>9.2f}x{r['weight_bytes'] / 1e6:>12.2f}"
        )
        if r["peak_vram_bytes"] is not None:
            line += f"{r['peak_vram_bytes'] / 1e6:>14.1f}"
        print(line)


if __name__ == "__main__":
    main()
