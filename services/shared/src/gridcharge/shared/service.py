"""What a service is to the process that hosts it, and the loop that hosts one or several.

`python -m gridcharge.<svc>` hosts one service; `gridcharge serve` and the embedded demo host
several in one process over the same bus and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fastapi import APIRouter
from gridcharge.shared.audit import AuditSink
from gridcharge.shared.auth import ApiAuth
from gridcharge.shared.config import Settings, check_environment
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.http import EdgeLimits, HttpServer, create_app, create_ops_app
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
    """Starts the runtime, the services and the HTTP edge; stops what started, in reverse order.

    `auth` overrides the API credentials from the settings (embedded hosts, tests)."""

    def __init__(
        self, rt: Runtime, services: Sequence[Service], http: bool = True, auth: ApiAuth | None = None
    ) -> None:
        self.rt, self.services, self.http_enabled = rt, list(services), http
        self.auth = auth
        self.http: HttpServer | None = None
        self.ops: HttpServer | None = None
        self._started: list[Service] = []
        self._bus_started = False

    async def start(self) -> None:
        st = self.rt.settings
        # credentials first: a bad token file must stop start-up before any service commands a station
        auth = self.auth or (ApiAuth.from_settings(st) if self.http_enabled else None)
        if self.http_enabled:
            assert auth is not None
            # the edge is built and its ports taken before any service starts: a busy port stops start-up
            # before a service commands a station or logs that it started
            routers = [r for s in self.services for r in s.routers]
            names = "+".join(s.name for s in self.services)
            limits = EdgeLimits.from_settings(st)
            audit = AuditSink(self.rt.bus, names, f"{names}/{st.replica_id}", self.rt.clock)
            app = create_app(
                "gridcharge " + names,
                self.rt.health,
                routers,
                auth=auth,
                audit=audit,
                limits=limits,
                ops=st.ops_port is None,
            )
            self.http = HttpServer(app, st.http_host, st.http_port, limits)
            self.http.bind()
            if st.ops_port is not None:
                self.ops = HttpServer(
                    create_ops_app(self.rt.health, limits),
                    st.http_host,
                    st.ops_port,
                    limits,
                    listener="ops",
                    port_var="GRIDCHARGE_OPS_PORT",
                )
                self.ops.bind()
        await self.rt.bus.start()
        self._bus_started = True
        for s in self.services:
            BUILD_INFO.labels(service=s.name, version=VERSION).set(1)
            await s.start()
            self._started.append(s)
        if self.http is not None:
            assert auth is not None
            await self.http.start()
            log.info("http listening", extra={"port": self.http.port, "api_auth": auth.describe()})
            if auth.open_access:
                log.warning(
                    "operator API open to anyone who reaches the port (GRIDCHARGE_API_OPEN_ACCESS=true): "
                    "development only"
                )
        if self.ops is not None:
            await self.ops.start()
            log.info("ops endpoints listening", extra={"port": self.ops.port})

    async def stop(self) -> None:
        for server in (self.ops, self.http):
            if server is not None:
                await server.stop()
        for s in reversed(self._started):
            with contextlib.suppress(Exception):
                await s.stop()
        self._started.clear()
        if self._bus_started:
            await self.rt.bus.stop()
            self._bus_started = False
        await self.rt.store.close()


def load_settings_and_topology(**overrides: Any) -> tuple[Settings, Topology]:
    settings = Settings.from_env(**overrides)
    if settings.topology is None:
        raise ConfigError("environment", "GRIDCHARGE_TOPOLOGY", "required: path to the topology YAML")
    return settings, load_topology(settings.topology)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every OCPP and HTTP connection is a descriptor, and a
    low soft limit (often 1024) runs out long before the connection caps do. Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(factories: Sequence[ServiceFactory], settings: Settings, topology: Topology) -> None:
    """Run services until SIGTERM. Start-up problems surface as ConfigError (one line, see `run_service`)."""
    setup_logging("+".join(getattr(f, "service_name", "svc") for f in factories), settings.log_level, settings.log_json)
    nofile = raise_open_files_limit()
    needed = settings.http_max_connections * (2 if settings.ops_port is not None else 1) + 64
    if nofile < needed:
        log.warning("open-files limit below the HTTP connection caps", extra={"nofile": nofile, "needed": needed})
    rt = build_runtime(settings)
    host: Host | None = None
    try:
        host = Host(rt, [f(rt, topology) for f in factories])
        await host.start()
        freeze_startup_heap()
        await wait_for_shutdown()
    finally:
        if host is not None:
            await host.stop()
        else:
            await rt.store.close()


def freeze_startup_heap() -> int:
    """Move what start-up allocated (imports, schemas, topology: ~185,000 objects) out of the collector's reach.

    It never becomes garbage, yet every full collection scanned it: ~70 ms on the dev machine, ~100 ms on CI,
    with the event loop stopped — every station's OCPP call and the limiter waited (a burst of HTTP connections
    was enough to trigger one). Frozen, a full collection sees only what was allocated since (0.0 ms measured
    right after). Process entry points only: a test process that froze would keep its tests' cycles forever.
    Returns the number of frozen objects."""
    gc.collect()
    gc.freeze()
    n = gc.get_freeze_count()
    log.info("start-up heap frozen for the garbage collector", extra={"objects": n})
    return n


def run_service(
    name: str,
    factories: Sequence[ServiceFactory],
    default_http_port: int | None = None,
    prepare: Callable[[Settings], Settings] | None = None,
    before_run: Callable[[], None] | None = None,
) -> int:
    """`python -m gridcharge.<name>`: a bad setting, file or port is one line on stderr and exit status 2."""
    try:
        for warning in check_environment():
            print(f"gridcharge-{name}: warning: {warning}", file=sys.stderr)
        port = None if os.environ.get("GRIDCHARGE_HTTP_PORT") else default_http_port
        settings, topology = load_settings_and_topology(http_port=port)
        if prepare is not None:
            settings = prepare(settings)
        if before_run is not None:
            before_run()
        asyncio.run(serve(factories, settings, topology))
    except ConfigError as exc:
        print(f"gridcharge-{name}: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
