"""What a graph compiles to, as plain data (no Ray calls): the deployment units
(`compiler`), the planner's choices (`planner`), tuned overlays (`overlay`), models shared
between graphs (`sharing`) and the graph file's Serve half (`config_check`)."""

from capgraph.serve import surface

__all__, __getattr__ = surface(
    __name__,
    {
        "compiler": ["Compiled", "GIB", "INGRESS", "Remote", "Unit", "compile_plan"],
        "config_check": ["application", "check_deployment_sections"],
        "overlay": [
            "OVERLAY_FORMAT",
            "Overlay",
            "default_path",
            "find_overlay",
            "fingerprint",
            "measured_costs",
            "overlay_yaml",
            "write_measured",
        ],
        "planner": ["Cost", "machine_for"],
        "sharing": ["Alias", "MODEL_APP_PREFIX"],
    },
)
