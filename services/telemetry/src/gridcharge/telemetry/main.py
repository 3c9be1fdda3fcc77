"""Wiring of the telemetry service: core + runtime (faust on Kafka, else the bus) + publisher + HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

from fastapi import APIRouter
from gridcharge.shared import contracts as C
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import serve
from gridcharge.shared.topology import Topology
from gridcharge.telemetry.adapters.bus_runtime import BusRuntime
from gridcharge.telemetry.adapters.engine import Engine
from gridcharge.telemetry.adapters.http import build_router
from gridcharge.telemetry.adapters.metrics import TelemetryMetrics
from gridcharge.telemetry.core import NodeLoadView, Outcome, TelemetryCore
from gridcharge.telemetry.settings import TelemetrySettings

if TYPE_CHECKING:
    from gridcharge.telemetry.adapters.faust_runtime import FaustRuntime

log = logging.getLogger(__name__)
DEFAULT_HTTP_PORT = 8081   # when run alone (docs/DEVELOPING.md); the embedded process serves all on 8080


class TelemetryService:
    """Consumes station and grid data, publishes NodeLoad every `telemetry_snapshot_s` and 15-min history."""

    name = "telemetry"

    def __init__(self, rt: Runtime, topology: Topology, settings: TelemetrySettings) -> None:
        self.rt, self.topology, self.settings = rt, topology, settings
        self.core = TelemetryCore(topology, settings.core_config())
        producer = f"telemetry/{settings.replica_id}"
        self.engine = Engine(self.core, TelemetryMetrics(), producer)
        use_faust = settings.telemetry_runtime == "faust" or (
            settings.telemetry_runtime == "auto" and settings.bus == "kafka")
        self.runtime: BusRuntime | FaustRuntime
        if use_faust:
            from gridcharge.telemetry.adapters.faust_runtime import FaustRuntime

            self.runtime = FaustRuntime(rt, self.engine, settings, self._after_record)
        else:
            self.runtime = BusRuntime(rt, self.engine, settings.telemetry_group, self._after_record)
        self.latest: dict[str, NodeLoadView] = {}
        self._fast_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._router = build_router(rt.bus, rt.clock, set(topology.node_by_id), producer, lambda: self.latest)

    @property
    def routers(self) -> list[APIRouter]:
        return [self._router]

    async def start(self) -> None:
        await self.runtime.start()
        self.rt.health.add("telemetry", lambda: self.runtime.ready)
        self._task = asyncio.create_task(self._publish_loop(), name="telemetry-publish")
        log.info("telemetry started", extra={"runtime": self.runtime.kind, "nodes": len(self.topology.nodes),
                                             "stations": len(self.topology.stations)})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.runtime.stop()

    async def _publish_loop(self) -> None:
        period = self.settings.telemetry_snapshot_s
        while True:
            now = self.rt.clock.time()
            await self.rt.clock.sleep(period - (now % period) if period > 0 else 1.0)
            if not self.runtime.ready:
                continue          # state not recovered yet: publishing would understate the load
            try:
                await self.publish_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("telemetry publish failed; retrying next period")

    async def _after_record(self, topic: str, key: str, outcome: Outcome | None) -> None:
        """Fast path for the limiter: a grid-meter reading that moves its node's load by
        `telemetry_fast_delta` of the limit, or above `telemetry_fast_above` of it, is published at once
        (with the node's ancestors) instead of waiting up to one snapshot period."""
        if topic != C.GRID_METER_READINGS.name or outcome is not Outcome.OK or not self.runtime.ready:
            return
        node_id = key if key in self.topology.node_by_id else None
        if node_id is None:
            return
        now = self.rt.clock.time()
        if now - self._fast_at.get(node_id, -1e18) < self.settings.telemetry_fast_min_interval_s:
            return
        meter = self.core.meter_for(node_id, now)
        if meter is None:
            return
        limit = self.topology.limit_w(node_id)
        prev = self.latest.get(node_id)
        urgent = any(p > self.settings.telemetry_fast_above * lim for p, lim in zip(meter.power_w, limit, strict=True))
        if prev is None or any(abs(p - q) > self.settings.telemetry_fast_delta * lim
                               for p, q, lim in zip(meter.power_w, prev.load_w, limit, strict=True)):
            urgent = True
        if not urgent:
            return
        self._fast_at[node_id] = now
        views = self.core.node_loads(now)
        self.latest = {**self.latest, **views}
        for rec in self.engine.node_load_records(views, self.topology.ancestors(node_id)):
            await self._send(rec.topic, rec.key, rec.value)

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        await self.rt.bus.publish(topic, key, value)
        if topic == C.NODE_LOAD.name:
            await self.rt.store.set(f"nodeload:{key}", value,
                                    ttl_s=max(self.settings.telemetry_nodeload_ttl_s,
                                              3 * self.settings.telemetry_snapshot_s))

    async def publish_once(self) -> dict[str, NodeLoadView]:
        """Compute node loads now and publish them (bus + store) with any closed history interval."""
        now = self.rt.clock.time()
        views, out = self.engine.snapshot(now)
        self.latest = views
        for rec in out:
            await self._send(rec.topic, rec.key, rec.value)
        return views


def create_service(rt: Runtime, topology: Topology) -> TelemetryService:
    """Service factory for `gridcharge serve`, the embedded demo and `python -m gridcharge.telemetry`."""
    return TelemetryService(rt, topology, TelemetrySettings.derive(rt.settings))


create_service.service_name = "telemetry"  # type: ignore[attr-defined]


def main() -> None:
    """Run telemetry alone (HTTP on GRIDCHARGE_HTTP_PORT, default 8081)."""
    from gridcharge.shared.service import load_settings_and_topology

    overrides = {} if os.environ.get("GRIDCHARGE_HTTP_PORT") else {"http_port": DEFAULT_HTTP_PORT}
    settings, topology = load_settings_and_topology(**overrides)
    asyncio.run(serve([create_service], settings, topology))
