"""The commands that operate a capability: `capgraph serve` (`run`), several graphs together
(`together`), `capgraph tune` (`tune`), KubeRay manifests (`kuberay`); they lean on process control:
signals and a local Ray (`serve.cluster.process`)."""

from capgraph.serve import surface

__all__, __getattr__ = surface(
    __name__,
    {
        "kuberay": ["Shape", "check_name", "memory_bytes", "rayservice"],
        "run": ["serve_graph"],
        "together": ["serve_config"],
        "tune": ["tune_graph"],
    },
)
