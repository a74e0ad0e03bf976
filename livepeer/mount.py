"""The Livepeer mount: how a served capability gets the Livepeer routes (BYOC, ai-runner,
Live Runner, live streams) through the `capgraph.mounts` entry point, configured by the
graph file's `livepeer:` section, without the Serve layer naming Livepeer."""

from collections.abc import Mapping
from typing import Any

from capgraph.engine.plan import Plan


class LivepeerMount:
    section = "livepeer"

    def check(self, raw: Any, plan: Plan | None) -> list[str]:
        from capgraph.livepeer.settings import check_livepeer_section

        return check_livepeer_section(raw, plan)

    def settings(self, plan: Plan, raw: Mapping[str, Any] | None) -> Any:
        from capgraph.livepeer.settings import load_settings

        return load_settings(plan, raw)

    def attach(self, app: Any, capability: Any, settings: Any) -> set[str]:
        from capgraph.livepeer.routes import mount

        limits = capability.settings
        return mount(
            app,
            capability.plan,
            capability.run,
            capability.is_ready,
            settings,
            run_live=getattr(capability, "run_live", None),
            streams_to=capability,
            max_pixels=limits.max_pixels,
            max_body_bytes=limits.max_body_bytes,
        )

    def error(self, exc: Exception, headers: Mapping[str, str] | None) -> Any:
        from capgraph.livepeer.guard import failure

        return failure(exc, headers=dict(headers or {}))


LIVEPEER = LivepeerMount()
