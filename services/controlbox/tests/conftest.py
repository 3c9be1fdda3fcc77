"""Fixtures for the control-box unit tests: a small topology, the in-process bus on a SimClock, a scripted relay."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from gridcharge.controlbox.service import ControlboxService
from gridcharge.controlbox.settings import ControlboxSettings
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Record
from gridcharge.shared.clock import SimClock
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import Runtime, build_runtime
from gridcharge.shared.topology import Topology, parse_topology

START = datetime(2026, 6, 3, 8, 0, tzinfo=UTC)
TOPOLOGY = {
    "site": {"id": "home", "timezone": "Europe/Berlin", "latitude": 52.5, "longitude": 13.4},
    "nodes": [{"id": "connection", "kind": "site", "limit_a": [63, 63, 63]}],
    "stations": [
        {"id": "wb1", "node": "connection", "ocpp": "1.6", "max_current_a": 32, "fallback_current_a": 6},
        {"id": "wb2", "node": "connection", "ocpp": "1.6", "max_current_a": 32, "fallback_current_a": 6},
    ],
}


def topology() -> Topology:
    return parse_topology(TOPOLOGY, "test topology")


@dataclass
class ScriptedRelay:
    """The contact as the test sets it; ``fail`` makes reads raise like a lost Modbus link."""

    closed: bool = False
    fail: bool = False
    reads: int = 0

    def describe(self) -> str:
        return "scripted"

    async def read(self) -> bool:
        self.reads += 1
        if self.fail:
            raise OSError("link down")
        return self.closed

    async def close(self) -> None:
        pass


@dataclass
class Env:
    rt: Runtime
    clock: SimClock
    svc: ControlboxService
    relay: ScriptedRelay
    limits: list[grid_pb2.ExternalLimit] = field(default_factory=list)

    async def run(self, seconds: float) -> None:
        for _ in range(int(seconds)):
            await self.clock.advance(1.0)
            await self.rt.bus.flush()


EnvFactory = Callable[..., Any]


@pytest.fixture
async def make_env() -> AsyncIterator[EnvFactory]:
    made: list[Env] = []

    async def make(**keys: Any) -> Env:
        clock = SimClock(START)
        base = Settings.from_env({}, bus="memory", replica_id="t")
        rt = build_runtime(base, clock)
        settings = ControlboxSettings.from_env(
            {}, **base.model_dump(), **{"controlbox_node": "connection", "controlbox_relay": "modbus", **keys}
        )
        relay = ScriptedRelay()
        svc = ControlboxService(rt, topology(), settings, relay if settings.controlbox_relay != "off" else None)
        env = Env(rt, clock, svc, relay)

        async def on_limit(rec: Record) -> None:
            env.limits.append(contracts.decode(grid_pb2.ExternalLimit, rec.value))

        await rt.bus.start()
        await rt.bus.subscribe([contracts.EXTERNAL_LIMITS.name], "t", on_limit)
        await svc.start()
        await rt.bus.flush()
        made.append(env)
        return env

    yield make
    for e in made:
        await e.svc.stop()
        await e.rt.bus.stop()
