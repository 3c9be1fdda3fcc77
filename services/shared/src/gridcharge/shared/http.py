"""The HTTP edge every service exposes: /metrics (Prometheus), /healthz (process alive) and /readyz
(dependencies reachable), plus whatever operator API routers the service mounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], bool | Awaitable[bool]]


class Health:
    """Named readiness checks; /readyz is 200 only when all pass."""

    def __init__(self) -> None:
        self.checks: dict[str, ReadinessCheck] = {}

    def add(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    async def evaluate(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for name, check in self.checks.items():
            try:
                res = check()
                out[name] = bool(await res) if inspect.isawaitable(res) else bool(res)
            except Exception:
                out[name] = False
        return out


def create_app(title: str, health: Health, routers: list[APIRouter] | None = None) -> FastAPI:
    app = FastAPI(title=title, version="0.1.0")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(response: Response) -> dict[str, object]:
        checks = await health.evaluate()
        ready = all(checks.values())
        response.status_code = 200 if ready else 503
        return {"ready": ready, "checks": checks}

    for r in routers or []:
        app.include_router(r)
    return app


class HttpServer:
    """uvicorn inside the service's event loop; port 0 picks a free port (see `.port`)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # _serve() rather than serve(): serve() captures SIGTERM/SIGINT, which belong to the host process
        self._task = asyncio.create_task(self.server._serve(), name="http")
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
