"""What a service is to the process that hosts it, and the loop that hosts one or several.

`python -m gridcharge.<svc>` hosts one service; `gridcharge serve` and the embedded demo host
several in one process over the same bus and store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fastapi import APIRouter
from gridcharge.shared.config import Settings
from gridcharge.shared.http import HttpServer, create_app
from gridcharge.shared.logging import setup_logging
from gridcharge.shared.metrics import BUILD_INFO
from gridcharge.shared.runtime import Runtime, build_runtime, wait_for_shutdown
from gridcharge.shared.topology import Topology, load_topology

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class Service(Protocol):
    name: str

    @property
    def routers(self) -> list[APIRouter]:
        """Operator API routers mounted on the HTTP edge."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ServiceFactory = Callable[[Runtime, Topology], Service]


class Host:
    """Starts the runtime, the services and the HTTP edge; stops them in reverse order."""

    def __init__(self, rt: Runtime, services: Sequence[Service], http: bool = True) -> None:
        self.rt, self.services, self.http_enabled = rt, list(services), http
        self.http: HttpServer | None = None

    async def start(self) -> None:
        await self.rt.bus.start()
        for s in self.services:
            BUILD_INFO.labels(service=s.name, version=VERSION).set(1)
            await s.start()
        if self.http_enabled:
            routers = [r for s in self.services for r in s.routers]
            title = "gridcharge " + "+".join(s.name for s in self.services)
            app = create_app(title, self.rt.health, routers)
            self.http = HttpServer(app, self.rt.settings.http_host, self.rt.settings.http_port)
            await self.http.start()
            log.info("http listening", extra={"port": self.http.port})

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
        for s in reversed(self.services):
            with contextlib.suppress(Exception):
                await s.stop()
        await self.rt.bus.stop()
        await self.rt.store.close()


def load_settings_and_topology(**overrides: Any) -> tuple[Settings, Topology]:
    settings = Settings.from_env(**overrides)
    if settings.topology is None:
        from gridcharge.shared.errors import ConfigError

        raise ConfigError("environment", "GRIDCHARGE_TOPOLOGY", "required: path to the topology YAML")
    return settings, load_topology(settings.topology)


async def serve(factories: Sequence[ServiceFactory], settings: Settings, topology: Topology) -> None:
    """Run services until SIGTERM."""
    setup_logging("+".join(getattr(f, "service_name", "svc") for f in factories), settings.log_level,
                  settings.log_json)
    rt = build_runtime(settings)
    host = Host(rt, [f(rt, topology) for f in factories])
    await host.start()
    try:
        await wait_for_shutdown()
    finally:
        await host.stop()
