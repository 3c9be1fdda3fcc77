"""Harness for the end-to-end tests: every service as its own process on the real Kafka and Redis (unique topic
and key prefixes per test), the simulator in the test process connecting its stations to the gateway(s).

Runs in real time, so scenarios are compressed to minutes: cars arrive within seconds, stay a few minutes and
need a few hundred Wh; the allocator runs with short leases (E2E_LEASE_S) so fail-safe behaviour shows quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from gridcharge.simulator.scenario import Scenario, build_scenario, scenario_path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
HERE = Path(__file__).parent


def require_infra() -> None:
    """Fail (not skip) when Kafka or Redis is down, like tests/conftest.py's fixtures."""
    import pytest

    for what, hostport in (
        ("Kafka", os.environ.get("GRIDCHARGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")),
        (
            "Redis",
            os.environ.get("GRIDCHARGE_REDIS_URL", "redis://127.0.0.1:6379/0").split("//", 1)[1].split("/", 1)[0],
        ),
    ):
        host, port = hostport.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError:
            pytest.fail(f"{what} not reachable at {hostport}: run `make kafka redis` (make test starts them)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def compressed_office(
    minutes: float = 4.0, *, cars: float = 0.5, events: list[dict[str, Any]] | None = None, seed: int = 7
) -> Scenario:
    """The shipped office scenario (topology, base load, weather, quirks) starting now, `minutes` long, with a
    fleet that arrives in the first 20 s and needs what a shared 86 kW car park can deliver by departure."""
    data = yaml.safe_load(scenario_path("office").read_text(encoding="utf-8"))
    now = datetime.now(UTC).replace(microsecond=0)
    data.update(
        {
            "start": _iso(now),
            "duration": f"{int(minutes * 60) + 30}s",
            "seed": seed,
            "step": "1s",
            "meter_interval": "5s",
            "grid_meter_interval": "2s",
            "events": events or [],
            "fleet": [
                {
                    "stations": "office-*",
                    "arrival": _iso(now + timedelta(seconds=8)),
                    "arrival_std": "4s",
                    "departure": _iso(now + timedelta(seconds=minutes * 60)),
                    "departure_std": "5s",
                    "min_stay": "60s",
                    "battery_kwh": [10, 10],
                    "arrival_soc": [0.5, 0.5],
                    "target_soc": [0.52, 0.54],
                    "max_current_a": [16, 32],
                    "phases": {3: 0.75, 1: 0.25},
                    "share": cars,
                }
            ],
        }
    )
    return build_scenario(data, "office (compressed for e2e)")


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fh = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.args, env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )

    def kill(self) -> None:
        """SIGKILL: the process dies without any clean-up (what a crash or OOM kill does)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Cluster:
    """The distributed cluster of one test."""

    scenario: Scenario
    unique: str
    workdir: Path
    gateways: int = 1
    lease_s: float = 30.0
    make_scenario: Callable[[], Scenario] | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    ocpp_ports: list[int] = field(default_factory=list)
    weather_url: str = ""

    @property
    def prefix(self) -> str:
        return f"e2e{self.unique}."

    @property
    def gateway_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{p}/ocpp" for p in self.ocpp_ports]

    def env(self, **extra: str) -> dict[str, str]:
        topo = self.workdir / "topology.yaml"
        if not topo.exists():
            data = self.scenario.topology.model_dump(mode="json", exclude_defaults=True)
            topo.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDCHARGE_")}
        env.update(
            {
                "GRIDCHARGE_BUS": "kafka",
                "GRIDCHARGE_TOPIC_PREFIX": self.prefix,
                "GRIDCHARGE_STORE_PREFIX": f"e2e{self.unique}:",
                "GRIDCHARGE_TOPOLOGY": str(topo),
                "GRIDCHARGE_KAFKA_BOOTSTRAP": os.environ.get("GRIDCHARGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                "GRIDCHARGE_REDIS_URL": os.environ.get("GRIDCHARGE_REDIS_URL", "redis://127.0.0.1:6379/0"),
                "GRIDCHARGE_HTTP_HOST": "127.0.0.1",
                "GRIDCHARGE_OCPP_HOST": "127.0.0.1",
                "GRIDCHARGE_LOG_JSON": "true",
                "GRIDCHARGE_LOG_LEVEL": "INFO",
                "GRIDCHARGE_WEATHER_BASE_URL": self.weather_url,
                "E2E_LEASE_S": str(self.lease_s),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    def add(self, name: str, module_args: list[str], **env: str) -> Proc:
        p = Proc(
            name,
            [PY, *module_args],
            self.env(GRIDCHARGE_HTTP_PORT=str(free_port()), GRIDCHARGE_REPLICA_ID=name, **env),
            self.workdir / f"{name}.log",
        )
        self.procs[name] = p
        p.start()
        return p

    missing: list[str] = field(default_factory=list)

    def built(self, svc: str) -> bool:
        import importlib.util

        ok = importlib.util.find_spec(f"gridcharge.{svc}.main") is not None
        if not ok and svc not in self.missing:
            self.missing.append(svc)
        return ok

    def start(self) -> None:
        for i in range(self.gateways):
            port = free_port()
            self.ocpp_ports.append(port)
            self.add(f"gateway-{i}", ["-m", "gridcharge.gateway"], GRIDCHARGE_OCPP_PORT=str(port))
        for svc in ("telemetry", "forecasting"):
            if self.built(svc):
                self.add(svc, ["-m", f"gridcharge.{svc}"])
        if self.built("allocation"):
            self.start_allocation()

    def start_allocation(self) -> Proc:
        return self.add("allocation", [str(HERE / "run_allocation.py")])

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Every gateway accepts TCP connections; fail early with the log tail when a process died."""
        deadline = time.monotonic() + timeout_s
        pending = list(self.ocpp_ports)
        while pending:
            for name, p in self.procs.items():
                if not p.alive:
                    raise RuntimeError(f"{name} exited early:\n{self.tail(name)}")
            with contextlib.suppress(OSError):
                _r, w = await asyncio.open_connection("127.0.0.1", pending[0])
                w.close()
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway ports {pending} not open after {timeout_s}s")
            await asyncio.sleep(0.3)

    def tail(self, name: str, lines: int = 30) -> str:
        p = self.workdir / f"{name}.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) if p.exists() else "(no log)"

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()


# -- running a scenario against the cluster, with timed actions -------------------------------------------


@dataclass
class Snapshot:
    """What every simulated station looked like at one moment."""

    t: float
    connected: dict[str, bool]
    url_index: dict[str, int]
    max_phase_a: dict[str, float]  # highest per-phase current the station draws
    limit_sources: dict[str, list[str]]  # per EVSE: Tx / TxDefault / StationMax / none
    accepted: dict[str, int]
    leased: set[str] = field(default_factory=set)  # stations under a station-cap lease (station max, stack ≥ 1)


@dataclass
class Timeline:
    sim: Any
    t0: float
    marks: dict[str, float] = field(default_factory=dict)
    snaps: dict[str, Snapshot] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def snapshot(sim: Any) -> Snapshot:
    now = sim.clock.time()
    return Snapshot(
        t=now,
        connected={sid: c.connected.is_set() for sid, c in sim.clients.items()},
        url_index={sid: c._url_index % max(1, len(c.urls)) for sid, c in sim.clients.items()},
        max_phase_a={sid: max(m.grid_currents_a()) for sid, m in sim.models.items()},
        limit_sources={
            sid: [e.limit_source for e in m.evses.values() if e.ev is not None] for sid, m in sim.models.items()
        },
        accepted={sid: c.stats.profiles_accepted for sid, c in sim.clients.items()},
        leased={sid for sid, m in sim.models.items() if (m.profiles.station_max_stack(now) or 0) > 0},
    )


async def run_timeline(cluster: Cluster, actions: list[tuple[float, str, Any]]) -> Timeline:
    """Run the cluster's scenario in real time; at each (seconds after start, name, fn) call fn(timeline) and
    take a snapshot named `name`. Kafka/Redis must be up; the cluster is stopped at the end."""
    from gridcharge.shared.bus.kafka import KafkaBus
    from gridcharge.simulator.demo import start_weather_server
    from gridcharge.simulator.grid import make_weather, weather_payload
    from gridcharge.simulator.live import run_live

    weather = make_weather(cluster.scenario.topology, cluster.scenario.spec.weather, time.time(), 2)
    wsrv = await start_weather_server(weather_payload(weather))
    cluster.weather_url = f"http://127.0.0.1:{wsrv.port}"
    bus = KafkaBus(
        os.environ.get("GRIDCHARGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"), prefix=cluster.prefix, client_id="e2e-simulator"
    )
    await bus.start()
    timeline: Timeline | None = None
    pending = sorted(actions, key=lambda a: a[0])
    try:
        cluster.start()
        await cluster.wait_ready()
        # the scenario's clock starts now that the cluster is up (same topology, fresh times)
        sc = cluster.make_scenario() if cluster.make_scenario is not None else cluster.scenario
        t0 = time.time()

        async def on_step(sim: Any) -> None:
            nonlocal timeline
            if timeline is None:
                timeline = Timeline(sim, t0)
            while pending and time.time() - t0 >= pending[0][0]:
                _, name, fn = pending.pop(0)
                timeline.marks[name] = time.time()
                if fn is not None:
                    res = fn(timeline)
                    if asyncio.iscoroutine(res):
                        await res
                timeline.snaps[name] = snapshot(sim)

        sim = await run_live(sc, cluster.gateway_urls, bus, step_s=1.0, on_step=on_step)
        if timeline is None:
            timeline = Timeline(sim, t0)
        return timeline
    finally:
        cluster.stop()
        await bus.stop()
        await wsrv.stop()
