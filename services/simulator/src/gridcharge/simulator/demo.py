"""`gridcharge demo`: the embedded cluster (in-process bus and store, simulated clock, all services in one
Host, the gateway on a real loopback WebSocket port) with the scenario's stations connecting over OCPP,
driven through a simulated day at accelerated speed; prints a summary table and writes a report.

The driver advances the SimClock in steps (the scenario's `step`, 20–30 s), and between steps waits for the
bus to drain and the OCPP traffic to settle, so services see the same ordering they would in real time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from gridcharge.shared.clock import SimClock, parse_duration
from gridcharge.shared.config import Settings
from gridcharge.shared.http import HttpServer
from gridcharge.shared.logging import setup_logging
from gridcharge.shared.runtime import Runtime, build_runtime
from gridcharge.shared.service import Host, Service
from gridcharge.shared.topology import Topology
from gridcharge.simulator.grid import make_weather, weather_payload
from gridcharge.simulator.report import write_report
from gridcharge.simulator.scenario import Event, Scenario, load_scenario
from gridcharge.simulator.sim import Simulation
from gridcharge.simulator.summary import format_summary

SERVICES = ("gateway", "telemetry", "forecasting", "allocation")
SNAPSHOT_ENV = "GRIDCHARGE_TELEMETRY_SNAPSHOT_S"
MAX_REAL_S = 170.0  # the demo must finish in under 3 minutes; a longer scenario is cut here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_or_any(port: int) -> int:
    """`port` if it can be bound on loopback now, else 0 (any free port; the demo prints the one it got)."""
    if port == 0:
        return 0
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def load_factories(names: tuple[str, ...] = SERVICES) -> dict[str, Callable[..., Service]]:
    """``create_service`` of each named service; a service that does not import raises (ImportError or
    AttributeError): the demo never runs with a piece silently missing."""
    return {n: importlib.import_module(f"gridcharge.{n}.main").create_service for n in names}


async def start_weather_server(payload: dict[str, Any], port: int = 0) -> HttpServer:
    """An Open-Meteo-compatible endpoint on loopback serving the scenario's forecast weather."""
    router = APIRouter()

    @router.get("/v1/forecast")
    def forecast() -> dict[str, Any]:
        return payload

    app = FastAPI(title="simulated weather")
    app.include_router(router)
    server = HttpServer(app, "127.0.0.1", port)
    await server.start()
    return server


class Progress:
    """A carriage-return progress bar (no dependency) on a terminal, a line per 10 % otherwise, or nothing."""

    def __init__(self, enabled: bool, total_s: float) -> None:
        self.enabled, self.total = enabled, total_s
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._decile = -1

    def update(self, done_s: float, sim_now: float, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2 and done_s < self.total:
            return
        self._last = now
        frac = min(1.0, done_s / self.total) if self.total else 1.0
        bar = "#" * int(frac * 30)
        clock = datetime.fromtimestamp(sim_now, UTC).strftime("%H:%MZ")
        if self.tty:
            sys.stderr.write(f"\r[{bar:<30}] {frac * 100:5.1f}%  sim {clock}  {note[:40]:<40}")
        elif int(frac * 10) > self._decile:
            self._decile = int(frac * 10)
            sys.stderr.write(f"[{bar:<30}] {frac * 100:5.1f}%  sim {clock}  {note[:40]}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


class EmbeddedCluster:
    """All built services in one Host over the in-process bus and store, with service outages on demand."""

    def __init__(
        self, rt: Runtime, topo: Topology, factories: dict[str, Callable[..., Service]], http: bool = True
    ) -> None:
        self.rt, self.topo, self.factories = rt, topo, factories
        self.services: dict[str, Service] = {n: f(rt, topo) for n, f in factories.items()}
        self.host = Host(rt, list(self.services.values()), http=http)

    async def start(self) -> None:
        await self.host.start()

    async def stop(self) -> None:
        await self.host.stop()

    async def on_event(self, e: Event, starting: bool) -> None:
        name = e.service if e.kind == "service_down" else "gateway" if e.kind == "gateway_down" else None
        if name is None or name not in self.factories:
            return
        if starting:
            svc = self.services.pop(name, None)
            if svc is not None:
                with contextlib.suppress(Exception):
                    await svc.stop()
                self.host.services.remove(svc)
        else:
            svc = self.factories[name](self.rt, self.topo)
            await svc.start()
            self.services[name] = svc
            self.host.services.append(svc)


async def settle(rt: Runtime, rounds: int = 2, pause_s: float = 0.001) -> None:
    """Let the bus drain and OCPP round trips on loopback complete before time moves on."""
    for _ in range(rounds):
        await rt.bus.flush()
        await asyncio.sleep(pause_s)
    await rt.bus.flush()


async def run_demo(
    scenario: Scenario,
    out: Path | None,
    *,
    speed: float | None = None,
    http_port: int = 8080,
    progress: bool = True,
    services: tuple[str, ...] = SERVICES,
    max_real_s: float = MAX_REAL_S,
) -> dict[str, Any]:
    """Run a scenario on the embedded cluster; write the report to `out`; return the summary."""
    factories = load_factories(services)
    clock = SimClock(datetime.fromtimestamp(scenario.start_s, UTC))
    days = max(1, int((scenario.end_s - scenario.start_s) // 86_400) + 3)  # the 48-h horizon past the end
    weather = make_weather(scenario.topology, scenario.spec.weather, scenario.start_s, days)
    weather_srv = await start_weather_server(weather_payload(weather))
    settings = Settings.from_env(
        {},
        bus="memory",
        http_host="127.0.0.1",
        http_port=port_or_any(http_port),
        ocpp_host="127.0.0.1",
        ocpp_port=free_port(),
        weather_base_url=f"http://127.0.0.1:{weather_srv.port}",
        log_level="WARNING",
        log_json=False,
        replica_id="demo",
        api_open_access=True,
    )  # development: loopback only, so anyone here may try the API
    # nothing changes between the driver's steps, so a node-load snapshot per step is enough (default 5 s);
    # set for this run only (restored at the end: a caller running more after the demo keeps its own)
    snapshot_env = os.environ.get(SNAPSHOT_ENV)
    os.environ.setdefault(SNAPSHOT_ENV, str(max(5.0, scenario.step_s)))
    rt = build_runtime(settings, clock)
    cluster = EmbeddedCluster(rt, scenario.topology, factories)
    sim = Simulation(
        scenario,
        clock,
        rt.bus,
        [f"ws://127.0.0.1:{settings.ocpp_port}/ocpp"],
        on_event=cluster.on_event,
        weather=weather,
        response_timeout_s=10.0,
        reconnect_s=0.05,
    )
    real0 = time.monotonic()
    bar = Progress(progress, scenario.end_s - scenario.start_s)
    await cluster.start()
    if cluster.host.http is not None and progress:
        sys.stderr.write(
            f"gridcharge demo: scenario '{scenario.name}', Prometheus metrics at "
            f"http://127.0.0.1:{cluster.host.http.port}/metrics (operator API open on loopback: "
            "development mode)\n"
        )
    try:
        connected = await sim.start(connect_timeout_s=10.0 if "gateway" in factories else 0.01)
        step = scenario.step_s
        cut = False
        while clock.time() < scenario.end_s:
            dt = min(step, scenario.end_s - clock.time())
            await sim.step(dt)
            await clock.advance(dt)
            await settle(rt)
            elapsed = time.monotonic() - real0
            if speed:
                ahead = (clock.time() - scenario.start_s) / speed - elapsed
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if elapsed > max_real_s:
                cut = True
                break
            bar.update(
                clock.time() - scenario.start_s,
                clock.time(),
                f"{sum(1 for c in sim.clients.values() if c.connected.is_set())}/{len(sim.clients)} online",
            )
        bar.close()
        summary = sim.summary()
        summary.update(
            {
                "real_seconds": time.monotonic() - real0,
                "stations_connected_at_start": connected,
                "services": sorted(factories),
                "cut_short": cut,
            }
        )
        if out is not None:
            write_report(sim, summary, out)
        return summary
    finally:
        await sim.stop()
        await cluster.stop()
        await weather_srv.stop()
        if snapshot_env is None:
            os.environ.pop(SNAPSHOT_ENV, None)


def cli_main(args: argparse.Namespace) -> int:
    """Entry point of `gridcharge demo` (args: scenario, out, speed, http_port, no_progress)."""
    setup_logging("demo", "WARNING", False)
    overrides = {"duration": getattr(args, "duration", None), "start": getattr(args, "start", None)}
    scenario = load_scenario(args.scenario, **overrides)
    out = Path(args.out) if args.out else None
    summary = asyncio.run(
        run_demo(scenario, out, speed=args.speed, http_port=args.http_port, progress=not args.no_progress)
    )
    print(format_summary(summary))
    if out is not None:
        print(f"\nreport: {out / 'index.html'}")
    return 0


def parse_duration_s(text: str) -> float:
    return parse_duration(text).total_seconds()
