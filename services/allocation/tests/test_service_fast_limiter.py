"""The service's fast limiter: never held up by a re-plan (the LP solves in a thread), once per measurement."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from gridcharge.allocation.core.model import Plan, PlanningProblem
from gridcharge.allocation.core.planner import LpPlanner
from gridcharge.allocation.service import AllocationService
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts as C
from gridcharge.shared.bus.base import Record
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.clock import SimClock
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.memory import MemoryStore
from gridcharge.shared.topology import parse_topology
from gridcharge.station.v1 import station_pb2

START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
V = 230.0


class GatedPlanner:
    """LpPlanner that, once armed, waits in its (worker) thread until released."""

    def __init__(self) -> None:
        self.inner = LpPlanner()
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def plan(self, problem: PlanningProblem) -> Plan:
        if self.armed:
            self.entered.set()
            assert self.release.wait(30), "test never released the planner"
        return self.inner.plan(problem)


@dataclass
class Env:
    clock: SimClock
    bus: MemoryBus
    svc: AllocationService
    planner: GatedPlanner
    tx_limits: list[tuple[str, float]] = field(default_factory=list)  # (station, A) of every station-cap lease

    async def on_command(self, rec: Record) -> None:
        cmd = C.decode(command_pb2.StationCommand, rec.value)
        prof = cmd.set_charging_profile.profile
        if prof.purpose == command_pb2.PROFILE_PURPOSE_STATION_MAX and prof.stack_level == 1:
            self.tx_limits.append((cmd.station_id, prof.periods[0].limit))
        res = command_pb2.CommandResult(
            command_id=cmd.command_id,
            station_id=cmd.station_id,
            generation=cmd.generation,
            command_key=cmd.command_key,
            outcome=command_pb2.COMMAND_OUTCOME_ACCEPTED,
        )
        await self.bus.publish(C.COMMAND_RESULTS.name, cmd.station_id, res.SerializeToString())

    async def event(self, station: str, **payload: object) -> None:
        ev = station_pb2.StationEvent(station_id=station, **payload)  # type: ignore[arg-type]
        ev.occurred_at.FromDatetime(self.clock.now())
        await self.bus.publish(C.STATION_EVENTS.name, station, ev.SerializeToString())
        await self.bus.flush()

    async def node_load(self, amps: float) -> None:
        nl = grid_pb2.NodeLoad(
            node_id="site",
            load_w=common_pb2.PhaseValues(l1=amps * V, l2=amps * V, l3=amps * V),
            base_load_w=common_pb2.PhaseValues(l1=30 * V, l2=30 * V, l3=30 * V),
        )
        nl.as_of.FromDatetime(self.clock.now())
        await self.bus.publish(C.NODE_LOAD.name, "site", nl.SerializeToString())
        await self.bus.flush()

    async def run(self, seconds: int) -> None:
        for _ in range(seconds):
            await self.clock.advance(1.0)
            await self.bus.flush()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    topo = parse_topology(
        {
            "nominal_voltage_v": 230,
            "nodes": [{"id": "site", "kind": "site", "limit_a": [80.0] * 3, "safety_margin_pct": 0}],
            "stations": [
                {"id": f"cs{i}", "node": "site", "max_current_a": 32, "fallback_current_a": 6} for i in range(1, 4)
            ],
        }
    )
    clock, bus, planner = SimClock(START), MemoryBus(), GatedPlanner()
    rt = Runtime(settings=Settings(replica_id="alloc-a"), bus=bus, store=MemoryStore(clock), clock=clock)
    svc = AllocationService(rt, topo, planner=planner)
    await bus.start()
    e = Env(clock, bus, svc, planner)
    await bus.subscribe([C.COMMANDS.name], "fake-gateway", e.on_command)
    await svc.start()
    for sid in ("cs1", "cs2", "cs3"):
        await e.event(sid, connected=station_pb2.Connected(replica_id="gw-0"))
    for sid in ("cs1", "cs2"):
        await e.event(
            sid, transaction_started=station_pb2.TransactionStarted(transaction_id=sid, evse_id=1, connector_id=1)
        )
    await e.run(3)
    assert {s for s, _a in e.tx_limits} == {"cs1", "cs2"}
    yield e
    planner.release.set()
    await svc.stop()
    await bus.stop()


async def test_limiter_lowers_while_a_replan_is_solving(env: Env) -> None:
    env.svc.planner.threaded = True  # as in real time: the LP runs in a worker thread
    env.planner.armed = True
    replan = asyncio.create_task(env.svc.replan())
    for _ in range(1000):
        if env.planner.entered.is_set():
            break
        await asyncio.sleep(0.005)
    assert env.planner.entered.is_set(), "the re-plan reached its planner"
    sent = len(env.tx_limits)
    await env.node_load(95.0)  # 15 A over the limit
    assert len(env.tx_limits) > sent, "lowered while the planner was still solving"
    assert not replan.done()
    env.planner.release.set()
    res = await asyncio.wait_for(replan, 30)
    assert res.plan is not None and res.error == ""


async def test_limiter_acts_once_per_measurement(env: Env) -> None:
    await env.node_load(95.0)
    first = len(env.tx_limits)
    lowered = dict(env.tx_limits)
    assert any(a < 28.0 for a in lowered.values())
    await env.run(5)
    sent = len(env.tx_limits)
    await env.node_load(95.0)  # a later snapshot repeating the same measurement
    assert len(env.tx_limits) == sent, "the same excess is not lowered twice"
    await env.node_load(96.0)  # a new measurement, still over: lowered again
    assert len(env.tx_limits) > sent >= first


async def test_real_time_replan_starts_when_the_debounce_ends_not_at_the_next_tick() -> None:
    from gridcharge.allocation.core.allocator import AllocatorConfig
    from gridcharge.shared.clock import RealClock

    topo = parse_topology(
        {
            "nodes": [{"id": "site", "kind": "site", "limit_a": [40.0] * 3}],
            "stations": [{"id": "cs1", "node": "site", "max_current_a": 32, "fallback_current_a": 6}],
        }
    )
    clock, bus = RealClock(), MemoryBus()
    rt = Runtime(settings=Settings(replica_id="alloc-rt"), bus=bus, store=MemoryStore(clock), clock=clock)
    svc = AllocationService(rt, topo, AllocatorConfig(debounce_s=0.2), tick_s=2.0)
    await bus.start()
    await svc.start()
    try:
        for _ in range(200):
            if svc._last_plan_at is not None:
                break
            await asyncio.sleep(0.01)
        first = svc._last_plan_at
        assert first is not None
        await asyncio.sleep(2.5)  # past one tick; the loop now waits for the next (≈ 1.5 s away)
        svc.mark_dirty()
        await asyncio.sleep(0.6)  # debounce 0.2 s, well before the tick
        assert svc._last_plan_at is not None and svc._last_plan_at > first
    finally:
        await svc.stop()
        await bus.stop()
