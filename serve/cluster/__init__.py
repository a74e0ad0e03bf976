"""Where replicas run on a cluster: will the graph fit (`preflight`), replicas spread again
when a machine returns (`respread`), torch threads that follow the load (`cores`), and the
settings every replica needs wherever Ray places it (`environment`), and the processes
behind them: signals, a local Ray, a local `serve run` (`process`)."""

from capgraph.serve import surface

__all__, __getattr__ = surface(
    __name__,
    {
        "cores": ["CoreShare", "machine_cores", "sharing_on"],
        "preflight": ["cluster_from_ray", "deployments"],
        "process": ["LocalRay", "StopSignals", "stop_local_serve_run", "wait_until_stopped"],
        "respread": ["claimed"],
    },
)
