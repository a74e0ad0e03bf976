"""Tell orchestrators the graph is there: BYOC registration and Live Runner heartbeats.

It registers once every node is warm, again on an interval and after an orchestrator
restart, and unregisters on shutdown; secrets are read from the environment, never logged.
docs/livepeer.md has what go-livepeer does and so what this does.
"""

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from capgraph.livepeer.settings import LivepeerSettings

log = logging.getLogger("capgraph.livepeer")

TIMEOUT_S = 5.0
HIDDEN = "***"


def byoc_body(settings: LivepeerSettings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `POST /capability/register` JSON (the token included: never log this dict)."""
    assert settings.byoc is not None
    body: dict[str, Any] = {
        "name": settings.name,
        "description": settings.description,
        "url": settings.url,
        "capacity": settings.capacity,
        "price_per_unit": settings.byoc.price_per_unit,
        "price_scaling": settings.byoc.price_scaling,
        "currency": "wei",
    }
    token = settings.token(environ)
    if token:
        body["token"] = token
    return body


def runner_body(settings: LivepeerSettings, status: str, runner_id: str | None = None) -> dict[str, Any]:
    """The `POST /runners/heartbeat` JSON."""
    assert settings.runner is not None
    runner = settings.runner
    body: dict[str, Any] = {
        "runner_url": settings.url,
        "app": runner.app,
        "mode": runner.mode,
        "capacity": settings.capacity,
        "price_info": {"price": runner.price, "currency": runner.currency, "unit": runner.unit},
        "status": status,
        "label": runner.label,
        "version": "",
        "proxy": False,
    }
    if runner_id:
        body["runner_id"] = runner_id
    return body


def runner_entry(settings: LivepeerSettings) -> dict[str, Any]:
    """One static `runners.json` entry (go-livepeer `-liveRunnerConfig`): the orchestrator
    polls `health_url` every 5 s with a 3 s timeout and wants exactly 200."""
    if settings.runner is None or not settings.url:
        raise ValueError(
            "a runners.json entry needs livepeer.url and a livepeer.runner section "
            "(or CAPGRAPH_LIVEPEER__URL and CAPGRAPH_LIVEPEER__RUNNER__APP)"
        )
    runner = settings.runner
    return {
        "label": runner.label or settings.name,
        "app": runner.app,
        "runner_url": settings.url,
        "health_url": runner.health_url,
        "healthy_status_code": 200,
        "mode": runner.mode,
        "capacity": settings.capacity,
        "price_info": {"price": runner.price, "currency": runner.currency, "unit": runner.unit},
    }


def parse_duration(text: Any, default: float) -> float:
    """A Go duration ("5s", "500ms", "1m0s") in seconds; `default` when it is not one."""
    if not isinstance(text, str):
        return default
    parts = re.findall(r"([0-9.]+)(ms|us|µs|ns|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return default
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(n) * scale[u] for n, u in parts) or default


class Registrar:
    """Keeps one graph registered with its orchestrator(s) while the service runs."""

    def __init__(
        self,
        settings: LivepeerSettings,
        is_ready: Callable[[], Awaitable[bool]],
        environ: Mapping[str, str] | None = None,
    ):
        self.settings = settings
        self.is_ready = is_ready
        self.environ = environ
        self.byoc_registered = False
        self.runner_id: str | None = None
        self._heartbeat_secret: str | None = None
        self._forgotten = False
        """Set when the orchestrator refused our heartbeat secret (it restarted)."""
        self._last_status: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._reasons: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self._client = httpx.AsyncClient(verify=s.verify_tls, timeout=TIMEOUT_S)
        if not s.url:
            log.error(
                "livepeer: no url set (livepeer.url or CAPGRAPH_LIVEPEER__URL): the orchestrator could not reach "
                "this service, so it is not registered"
            )
            return
        if s.orch_secret(self.environ) is None:
            log.error("livepeer: the orchestrator secret env var %s is empty: not registering", s.secret_env)
            return
        if s.byoc is not None and s.byoc.orchestrator:
            self._tasks.append(asyncio.create_task(self._byoc_loop(), name="capgraph-byoc"))
        if s.runner is not None and s.runner.orchestrator:
            self._tasks.append(asyncio.create_task(self._runner_loop(), name="capgraph-runner"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("livepeer: registrar task failed")
        self._tasks.clear()
        try:
            if self.byoc_registered:
                await self.byoc_unregister()
            if self.runner_id:
                await self.runner_unregister()
        finally:
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    async def _ready(self) -> bool:
        try:
            return bool(await self.is_ready())
        except Exception as exc:  # a readiness probe that fails means not ready
            self._log_once(f"ready:{type(exc).__name__}", "livepeer: readiness check failed: %s", exc)
            return False

    def _log_once(self, key: str, message: str, *args: Any) -> None:
        """Log a recurring problem once until it clears, not every few seconds."""
        if key not in self._reasons:
            self._reasons.add(key)
            log.warning(message, *args)

    def _clear(self, prefix: str) -> None:
        self._reasons = {r for r in self._reasons if not r.startswith(prefix)}

    # -- BYOC ------------------------------------------------------------------------------

    async def byoc_register(self) -> httpx.Response:
        s = self.settings
        assert s.byoc is not None and self._client is not None
        body = byoc_body(s, self.environ)
        response = await self._client.post(
            f"{s.byoc.orchestrator.rstrip('/')}/capability/register",
            content=json.dumps(body),
            headers={"Authorization": s.orch_secret(self.environ) or "", "Content-Type": "application/json"},
        )
        self.byoc_registered = response.status_code == 200
        return response

    async def byoc_unregister(self) -> httpx.Response | None:
        s = self.settings
        assert s.byoc is not None
        client = self._client or httpx.AsyncClient(verify=s.verify_tls, timeout=TIMEOUT_S)
        try:
            response = await client.post(
                f"{s.byoc.orchestrator.rstrip('/')}/capability/unregister",
                content=s.name.encode(),
                headers={"Authorization": s.orch_secret(self.environ) or "", "Content-Type": "text/plain"},
            )
            log.info("livepeer: unregistered BYOC capability '%s' (%d)", s.name, response.status_code)
            return response
        except httpx.HTTPError as exc:
            log.warning("livepeer: could not unregister BYOC capability '%s': %s", s.name, exc)
            return None
        finally:
            self.byoc_registered = False
            if client is not self._client:
                await client.aclose()

    async def _byoc_loop(self) -> None:
        s = self.settings
        assert s.byoc is not None and self._client is not None
        orchestrator = s.byoc.orchestrator.rstrip("/")
        next_at = 0.0
        while True:
            if not await self._ready():
                if self.byoc_registered:
                    await self.byoc_unregister()
                await asyncio.sleep(s.probe_s)
                continue
            if not self.byoc_registered or time.monotonic() >= next_at:
                try:
                    response = await self.byoc_register()
                except httpx.HTTPError as exc:
                    self.byoc_registered = False
                    self._log_once(
                        "byoc:down",
                        "livepeer: orchestrator %s unreachable (%s); retrying",
                        orchestrator,
                        type(exc).__name__,
                    )
                    await asyncio.sleep(s.probe_s)
                    continue
                if response.status_code == 200:
                    self._clear("byoc:")
                    log.info("livepeer: BYOC capability '%s' registered with %s at %s", s.name, orchestrator, s.url)
                    next_at = time.monotonic() + s.byoc.interval_s
                else:  # a wrong secret answers 400: retry slowly, the operator has to fix it
                    self._log_once(
                        f"byoc:{response.status_code}",
                        "livepeer: %s refused the registration: %d %s",
                        orchestrator,
                        response.status_code,
                        response.text[:200],
                    )
                    next_at = time.monotonic() + s.byoc.interval_s
                    await self._sleep_until(next_at)
                    continue
            await asyncio.sleep(s.probe_s)
            if self.byoc_registered and not await self._alive(orchestrator):
                # Down now; whether it restarted or not, register again as soon as it answers.
                self.byoc_registered = False
                self._log_once(
                    "byoc:down", "livepeer: orchestrator %s stopped answering; will register again", orchestrator
                )

    async def _alive(self, orchestrator: str) -> bool:
        """Whether the orchestrator answers HTTP at all (any status counts)."""
        assert self._client is not None
        try:
            await self._client.get(f"{orchestrator}/", timeout=min(TIMEOUT_S, self.settings.probe_s * 2))
            return True
        except httpx.HTTPError:
            return False

    async def _sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    # -- Live Runner -----------------------------------------------------------------------

    async def heartbeat(self, status: str) -> httpx.Response:
        s = self.settings
        assert s.runner is not None and self._client is not None
        secret = self._heartbeat_secret or s.orch_secret(self.environ) or ""
        response = await self._client.post(
            f"{s.runner.orchestrator.rstrip('/')}/runners/heartbeat",
            content=json.dumps(runner_body(s, status, self.runner_id)),
            headers={"Authorization": secret, "Content-Type": "application/json"},
        )
        if response.status_code == 200:
            answer = response.json()
            self.runner_id = answer.get("runner_id") or self.runner_id
            self._heartbeat_secret = answer.get("heartbeat_secret") or self._heartbeat_secret
        elif response.status_code == 401 and self._heartbeat_secret is not None:
            # The orchestrator no longer knows our heartbeat secret: it restarted.
            self._heartbeat_secret, self.runner_id, self._forgotten = None, None, True
        return response

    async def runner_unregister(self) -> httpx.Response | None:
        s = self.settings
        assert s.runner is not None
        if not self.runner_id or not self._heartbeat_secret:
            return None
        client = self._client or httpx.AsyncClient(verify=s.verify_tls, timeout=TIMEOUT_S)
        try:
            response = await client.post(
                f"{s.runner.orchestrator.rstrip('/')}/runners/{self.runner_id}/unregister",
                headers={"Authorization": self._heartbeat_secret},
            )
            log.info("livepeer: unregistered runner %s (%d)", self.runner_id, response.status_code)
            return response
        except httpx.HTTPError as exc:
            log.warning("livepeer: could not unregister runner %s: %s", self.runner_id, exc)
            return None
        finally:
            self.runner_id, self._heartbeat_secret = None, None
            if client is not self._client:
                await client.aclose()

    async def _runner_loop(self) -> None:
        s = self.settings
        assert s.runner is not None
        orchestrator = s.runner.orchestrator.rstrip("/")
        interval = s.runner.interval_s
        while True:
            ready = await self._ready()
            status = "ready" if ready else "loading"
            try:
                response = await self.heartbeat(status)
            except httpx.HTTPError as exc:
                self._log_once(
                    "runner:down",
                    "livepeer: orchestrator %s unreachable (%s); retrying",
                    orchestrator,
                    type(exc).__name__,
                )
                response = None
            if response is not None:
                if response.status_code == 200:
                    self._clear("runner:")
                    if status != self._last_status:
                        log.info("livepeer: runner %s at %s is %s", self.runner_id, orchestrator, status)
                        self._last_status = status
                    interval = parse_duration(response.json().get("heartbeat_interval"), s.runner.interval_s)
                elif response.status_code == 401 and self._forgotten:
                    self._forgotten = False
                    log.info("livepeer: %s forgot this runner (restarted?); registering again", orchestrator)
                    continue  # heartbeat again at once with the orchestrator secret
                else:
                    self._log_once(
                        f"runner:{response.status_code}",
                        "livepeer: %s refused the heartbeat: %d %s",
                        orchestrator,
                        response.status_code,
                        response.text[:200],
                    )
            # Wait for the next beat, but announce a change of readiness at once.
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline:
                await asyncio.sleep(min(s.probe_s, max(0.0, deadline - time.monotonic())))
                if await self._ready() != ready:
                    break


# -- by hand (capgraph register / runners-json) ----------------------------------------------


def _settings_for(path: str | Path, environ: Mapping[str, str] | None) -> LivepeerSettings:
    from capgraph.engine.validate import load_plan
    from capgraph.livepeer.settings import settings_from_file

    return settings_from_file(path, load_plan(path), environ)


def register_graph(
    path: str | Path, *, unregister: bool = False, follow: bool = False, environ: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """`capgraph register GRAPH`: register (or `unregister`) the graph's capability with the
    orchestrator(s) its `livepeer:` section names, once, and return what each answered:
    `[{"kind": "byoc"|"runner", "orchestrator": url, "status": int, "body": text}]`.

    With `follow`, keep it registered as the built-in registrar would, as a sidecar: the
    service's own `{url}/ready` decides readiness, until interrupted (Ctrl-C)."""
    settings = _settings_for(path, environ)
    if settings.byoc is None and settings.runner is None:
        raise ValueError("the graph's livepeer section has no byoc or runner orchestrator to register with")
    if not settings.url:
        raise ValueError("livepeer.url (or CAPGRAPH_LIVEPEER__URL) must say where the orchestrator reaches the service")
    if settings.orch_secret(environ) is None:
        raise ValueError(f"set the orchestrator secret in the environment variable {settings.secret_env}")
    if follow:
        return asyncio.run(_follow(settings, environ))
    return asyncio.run(_register_once(settings, environ, unregister))


async def _register_once(
    settings: LivepeerSettings, environ: Mapping[str, str] | None, unregister: bool
) -> list[dict[str, Any]]:
    registrar = Registrar(settings, _always_ready, environ)
    registrar._client = httpx.AsyncClient(verify=settings.verify_tls, timeout=TIMEOUT_S)
    answers: list[dict[str, Any]] = []
    try:
        if settings.byoc is not None and settings.byoc.orchestrator:
            orchestrator = settings.byoc.orchestrator
            try:
                response = await (registrar.byoc_unregister() if unregister else registrar.byoc_register())
                answers.append(_answer("byoc", orchestrator, response))
            except httpx.HTTPError as exc:
                answers.append(
                    {"kind": "byoc", "orchestrator": orchestrator, "status": None, "body": f"unreachable: {exc}"}
                )
        if settings.runner is not None and settings.runner.orchestrator:
            orchestrator = settings.runner.orchestrator
            if unregister:
                answers.append(
                    {
                        "kind": "runner",
                        "orchestrator": orchestrator,
                        "status": None,
                        "body": "a runner registered by hand expires 20 s after its last heartbeat; nothing to send",
                    }
                )
            else:
                try:
                    answers.append(_answer("runner", orchestrator, await registrar.heartbeat("ready")))
                except httpx.HTTPError as exc:
                    answers.append(
                        {"kind": "runner", "orchestrator": orchestrator, "status": None, "body": f"unreachable: {exc}"}
                    )
    finally:
        await registrar._client.aclose()
    return answers


async def _follow(settings: LivepeerSettings, environ: Mapping[str, str] | None) -> list[dict[str, Any]]:
    ready_url = f"{settings.url.rstrip('/')}/ready"  # type: ignore[union-attr]

    async def service_ready() -> bool:
        async with httpx.AsyncClient(timeout=3.0) as client:
            try:
                return (await client.get(ready_url)).status_code == 200
            except httpx.HTTPError:
                return False

    registrar = Registrar(settings, service_ready, environ)
    await registrar.start()
    try:
        await asyncio.Event().wait()
    finally:
        await registrar.stop()
    return []


async def _always_ready() -> bool:
    return True


def _answer(kind: str, orchestrator: str, response: httpx.Response | None) -> dict[str, Any]:
    if response is None:
        return {"kind": kind, "orchestrator": orchestrator, "status": None, "body": "no answer"}
    body = response.text
    try:
        doc = response.json()
        if isinstance(doc, dict) and "heartbeat_secret" in doc:
            doc["heartbeat_secret"] = HIDDEN
            body = json.dumps(doc)
    except ValueError:
        pass
    return {"kind": kind, "orchestrator": orchestrator, "status": response.status_code, "body": body}


def runners_json(
    path: str | Path, existing: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`capgraph runners-json GRAPH`: a static Live Runner config with this graph's entry,
    merged into `existing` (an entry with the same app and runner_url is replaced)."""
    entry = runner_entry(_settings_for(path, environ))
    runners = [
        r
        for r in (existing or {}).get("runners", [])
        if not (r.get("app") == entry["app"] and r.get("runner_url") == entry["runner_url"])
    ]
    return {**(existing or {}), "runners": runners + [entry]}
