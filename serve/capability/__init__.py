"""The HTTP capability: the ingress (`ingress`) and its app (`routes`), the wire format
(`http`, `wire`), errors (`errors`), health (`health`, `incidents`), live figures
(`traffic`), the console (`console`, `static/`) and a run's HTML report (`report`)."""

from capgraph.serve import surface

__all__, __getattr__ = surface(
    __name__,
    {
        "errors": ["RETRY_AFTER_S", "retry_headers"],
        "http": ["check_params", "render_json", "request_schema", "route_path"],
        "ingress": ["Capability", "Settings"],
        "report": ["run_report"],
        "trace": ["TRACE_HEADER", "Trace", "trace_wanted", "unit_stamps"],
        "wire": ["MAX_BODY_BYTES", "media_type", "read_body", "read_form", "read_job"],
    },
)
