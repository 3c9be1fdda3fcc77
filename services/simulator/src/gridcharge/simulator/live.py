"""Live mode: a scenario in real time against a running gateway (`make up`, the end-to-end tests).

`python -m gridcharge.simulator --scenario office --gateway ws://127.0.0.1:9000/ocpp [--bus kafka]`
shifts the scenario to start now, connects its stations to the gateway replica(s), publishes grid-meter
readings and DSO limits on the bus, and writes the summary (and, with --out, the report) at the end or on
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gridcharge.shared.bus.base import Bus
from gridcharge.shared.clock import RealClock
from gridcharge.shared.config import Settings
from gridcharge.shared.logging import setup_logging
from gridcharge.simulator.scenario import Scenario, load_scenario
from gridcharge.simulator.sim import EventHook, Simulation

log = logging.getLogger(__name__)


async def run_live(
    scenario: Scenario,
    gateway_urls: list[str],
    bus: Bus | None,
    *,
    step_s: float = 1.0,
    stop: asyncio.Event | None = None,
    on_event: EventHook | None = None,
    on_step: Any = None,
    response_timeout_s: float = 10.0,
) -> Simulation:
    """Step the scenario in real time until its end (or `stop`); return the finished Simulation."""
    clock = RealClock()
    sim = Simulation(
        scenario, clock, bus, gateway_urls, on_event=on_event, response_timeout_s=response_timeout_s, reconnect_s=0.5
    )
    await sim.start(connect_timeout_s=30.0)
    # commissioning: no car plugs in before the station has its fallback profile (a station without any
    # profile charges unlimited, which is the point of the fallback); bounded, so a cluster without an
    # allocator still runs
    deadline = time.monotonic() + 30.0

    def waiting() -> bool:
        return time.monotonic() < deadline and any(
            c.connected.is_set() and c.stats.profiles_accepted == 0 and not c.model.quirks.rejects_profiles
            for c in sim.clients.values()
        )

    while waiting():  # noqa: ASYNC110 - polls client state, there is no event to wait on
        await asyncio.sleep(0.2)
    stop = stop or asyncio.Event()
    try:
        nxt = time.monotonic()
        while clock.time() < scenario.end_s and not stop.is_set():
            await sim.step(step_s)
            if on_step is not None:
                await on_step(sim)
            nxt += step_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, nxt - time.monotonic()))
    finally:
        await sim.stop()
    return sim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gridcharge.simulator", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="office")
    p.add_argument(
        "--gateway",
        action="append",
        default=None,
        help="gateway OCPP base URL (repeat for replicas); default ws://127.0.0.1:9000/ocpp",
    )
    p.add_argument(
        "--bus",
        choices=["memory", "kafka", "none"],
        default=None,
        help="where grid-meter readings go (default: GRIDCHARGE_BUS)",
    )
    p.add_argument("--duration", default=None, help="override the scenario duration, e.g. 30m")
    p.add_argument("--step", type=float, default=1.0, help="real seconds per simulation step")
    p.add_argument("--out", default=None, help="write the report here at the end")
    p.add_argument(
        "--serve-weather",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve the scenario's forecast weather (Open-Meteo API) on 127.0.0.1:PORT",
    )
    p.add_argument(
        "--write-topology",
        default=None,
        metavar="PATH",
        help="write the scenario's topology YAML (for GRIDCHARGE_TOPOLOGY) and exit",
    )
    args = p.parse_args(argv)
    if args.write_topology:
        import yaml

        sc = load_scenario(args.scenario)
        data = sc.topology.model_dump(mode="json", exclude_defaults=True)
        Path(args.write_topology).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return 0
    settings = Settings.from_env()
    setup_logging("simulator", settings.log_level, settings.log_json)
    start = datetime.now(UTC).replace(microsecond=0).isoformat()
    scenario = load_scenario(args.scenario, start=start, duration=args.duration)
    urls = args.gateway or [f"ws://127.0.0.1:{settings.ocpp_port}/ocpp"]
    return asyncio.run(_main(scenario, urls, args.bus or settings.bus, settings, args))


async def _main(
    scenario: Scenario, urls: list[str], bus_kind: str, settings: Settings, args: argparse.Namespace
) -> int:
    bus: Bus | None = None
    if bus_kind == "kafka":
        from gridcharge.shared.bus.kafka import KafkaBus

        bus = KafkaBus(settings.kafka_bootstrap, prefix=settings.topic_prefix, client_id="simulator")
        await bus.start()
    weather_srv = None
    if args.serve_weather is not None:
        from gridcharge.simulator.demo import start_weather_server
        from gridcharge.simulator.grid import make_weather, weather_payload

        w = make_weather(
            scenario.topology,
            scenario.spec.weather,
            scenario.start_s,
            int((scenario.end_s - scenario.start_s) // 86_400) + 2,
        )
        weather_srv = await start_weather_server(weather_payload(w), args.serve_weather)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        sim = await run_live(scenario, urls, bus, step_s=args.step, stop=stop)
    finally:
        if bus is not None:
            await bus.stop()
        if weather_srv is not None:
            await weather_srv.stop()
    summary = sim.summary()
    print(json.dumps(summary, default=str), file=sys.stdout)
    if args.out:
        from gridcharge.simulator.report import write_report

        write_report(sim, {**summary, "real_seconds": 0.0}, Path(args.out))
    return 0
