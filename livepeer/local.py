"""The Livepeer surface without Ray: the in-process executor behind the same `run`/`is_ready`
contract the Ray Serve ingress gives `mount`; for tests, one-GPU containers without Ray,
and as the baseline the Ray version is measured against. docs/livepeer.md.
"""

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from capgraph.engine.executor import Executor
from capgraph.engine.node import NodeParams
from capgraph.engine.plan import Plan
from capgraph.livepeer.routes import mount
from capgraph.livepeer.settings import LivepeerSettings


class ExecutorBackend:
    """`run`, `run_batch` and `is_ready` over an in-process `Executor`, which runs in a thread."""

    def __init__(self, plan: Plan, device: str | None = None):
        self.executor = Executor(plan, device)
        self._lock = threading.Lock()
        self._ready = False
        self.error: BaseException | None = None

    async def load(self) -> None:
        """Build, load and warm every node (in a thread); `is_ready` turns true after."""
        try:
            await asyncio.to_thread(self.executor.load)
        except BaseException as exc:
            self.error = exc
            raise
        self._ready = True

    async def is_ready(self) -> bool:
        return self._ready

    async def run(
        self, inputs: dict[str, Any], params: Mapping[str, NodeParams]
    ) -> tuple[dict[str, Any], dict[str, float]]:
        result = await asyncio.to_thread(self._run, [inputs], params)
        return result.outputs[0], result.timings_ms

    async def run_batch(
        self, frames: list[dict[str, Any]], params: list[Mapping[str, NodeParams]]
    ) -> list[dict[str, Any]]:
        return (await asyncio.to_thread(self._run_each, frames, params)).outputs

    def _run(self, frames: list[dict[str, Any]], params: Mapping[str, NodeParams]) -> Any:
        return self._run_each(frames, [params] * len(frames))

    def _run_each(self, frames: list[dict[str, Any]], params: list[Mapping[str, NodeParams]]) -> Any:
        with self._lock:
            return self.executor.run_each(frames, params)


def local_app(plan: Plan, settings: LivepeerSettings, backend: ExecutorBackend | None = None) -> FastAPI:
    """A FastAPI app with ai-runner's `/health` and the Livepeer routes; the nodes load in
    the background once the server starts, so `/health` says LOADING and `/ready` 503 until warm."""
    backend = backend or ExecutorBackend(plan)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(backend.load())
        yield
        if not task.done():
            task.cancel()

    app = FastAPI(title=plan.capability, lifespan=lifespan)

    @app.get("/health")
    async def health() -> JSONResponse:
        status = "ERROR" if backend.error is not None else "IDLE" if await backend.is_ready() else "LOADING"
        return JSONResponse({"status": status})

    mount(app, plan, backend.run, backend.is_ready, settings, run_batch=backend.run_batch, bearer_auth=False)
    return app
