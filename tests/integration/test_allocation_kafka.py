"""Allocation end to end on real Kafka + Redis: OCPP 1.6 stations (the `ocpp` library's ChargePoint, which
validates what it receives against the official schemas) connect to the gateway, sessions arrive through
it, and the allocation service's profiles come back to the stations: the station-wide fallback at boot,
then the station-cap leases (a one-EVSE station's grant), shared within the site limit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from gridcharge.allocation.core.allocator import AllocatorConfig
from gridcharge.allocation.core.leases import LeasePolicy
from gridcharge.allocation.service import AllocationService
from gridcharge.gateway.config import GatewaySettings
from gridcharge.gateway.service import GatewayService
from gridcharge.plan.v1 import plan_pb2
from gridcharge.shared.bus.kafka import KafkaBus
from gridcharge.shared.clock import RealClock
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.redis import RedisStore
from gridcharge.shared.topology import parse_topology
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as res16
from websockets.asyncio.client import connect

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

TOPOLOGY = parse_topology(
    {
        "nominal_voltage_v": 230,
        "nodes": [{"id": "site", "kind": "site", "limit_a": [40, 40, 40], "safety_margin_pct": 0}],
        "stations": [{"id": f"CP{i}", "node": "site", "max_current_a": 32, "fallback_current_a": 6} for i in (1, 2)],
    }
)


class Station16(Cp16):
    """A 1.6 station that accepts every profile and remembers it."""

    profiles: list[tuple[int, dict[str, Any]]]

    @on("SetChargingProfile")
    async def on_scp(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        self.profiles.append((connector_id, cs_charging_profiles))
        return res16.SetChargingProfile(status="Accepted")

    @on("GetConfiguration")
    async def on_gc(self, key: list[str] | None = None) -> Any:
        return res16.GetConfiguration(
            configuration_key=[
                {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "5"},
                {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Current,Power"},
                {"key": "ChargingScheduleMaxPeriods", "readonly": True, "value": "24"},
            ]
        )

    def of(self, purpose: str, stack: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        return [
            (c, p)
            for c, p in self.profiles
            if p["charging_profile_purpose"] == purpose and (stack is None or p["stack_level"] == stack)
        ]


@dataclass
class Cluster:
    rt: Runtime
    gateway: GatewayService
    allocation: AllocationService

    def url(self, station: str) -> str:
        return f"ws://127.0.0.1:{self.gateway.ocpp_port}/ocpp/{station}"


async def wait_for(pred: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.1)


@pytest.fixture
async def cluster(kafka_bus: KafkaBus, redis_store: RedisStore) -> AsyncIterator[Cluster]:
    settings = GatewaySettings(
        bus="kafka", ocpp_port=0, ocpp_host="127.0.0.1", replica_id="it-alloc", call_timeout_s=10
    )
    rt = Runtime(settings=settings, bus=kafka_bus, store=redis_store, clock=RealClock())
    gw = GatewayService(rt, TOPOLOGY, settings)
    cfg = AllocatorConfig(
        plan_interval_s=5.0, debounce_s=0.3, leases=LeasePolicy(epoch_s=120.0, renew_lead_s=20.0, clock_skew_s=2.0)
    )
    alloc = AllocationService(rt, TOPOLOGY, cfg, tick_s=0.2)
    await gw.start()
    await alloc.start()
    for sub in alloc._subs:
        await sub.wait_assigned(60)
    yield Cluster(rt, gw, alloc)
    await alloc.stop()
    await gw.stop()


@contextlib.asynccontextmanager
async def station(cluster: Cluster, sid: str) -> AsyncIterator[Station16]:
    async with connect(cluster.url(sid), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        cp = Station16(sid, ws)
        cp.profiles = []
        task = asyncio.create_task(cp.start())
        try:
            boot = await cp.call(call16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
            assert boot.status == "Accepted"
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def test_sessions_through_gateway_profiles_to_stations(cluster: Cluster, redis_store: RedisStore) -> None:
    async with station(cluster, "CP1") as cp1, station(cluster, "CP2") as cp2:
        # 1. fallback at boot: station-wide max profile, stack 0, 6 A, no end
        for cp in (cp1, cp2):

            def has_fallback(cp: Station16 = cp) -> bool:
                return bool(cp.of("ChargePointMaxProfile", 0))

            await wait_for(has_fallback, what=f"{cp.id} fallback")
            conn, fb = cp.of("ChargePointMaxProfile", 0)[-1]
            assert conn == 0
            sched = fb["charging_schedule"]
            assert sched["charging_rate_unit"] == "A"
            assert sched["charging_schedule_period"][0]["limit"] == 6.0
            assert "valid_to" not in fb

        # 2. a session on CP1: a station-cap lease (stack 1, with an end) lifts it; one EVSE, so no TxProfile
        start = await cp1.call(
            call16.StartTransaction(connector_id=1, id_tag="T1", meter_start=1000, timestamp="2026-06-01T10:00:00Z")
        )
        tx1 = start.transaction_id
        await wait_for(lambda: bool(cp1.of("ChargePointMaxProfile", 1)), what="CP1 station lease")
        conn, lease = cp1.of("ChargePointMaxProfile", 1)[-1]
        assert conn == 0 and "valid_to" in lease
        first = lease["charging_schedule"]["charging_schedule_period"][0]["limit"]
        assert first == 32.0  # its hardware max (40 A site − CP2's 6 A fallback leaves 34 A)
        assert not cp1.of("TxProfile")

        def latest(cp: Station16) -> float:
            caps = cp.of("ChargePointMaxProfile", 1)
            return float(caps[-1][1]["charging_schedule"]["charging_schedule_period"][0]["limit"]) if caps else 6.0

        # 3. a second session: both share the 40 A site, every moment within the limit
        start2 = await cp2.call(
            call16.StartTransaction(connector_id=1, id_tag="T2", meter_start=0, timestamp="2026-06-01T10:01:00Z")
        )
        await wait_for(lambda: latest(cp1) + latest(cp2) <= 40.0 + 1e-6, what="shared site limit")
        await wait_for(lambda: len(cluster.allocation.alloc.book) == 2, what="two sessions")
        now = cluster.rt.clock.time()
        assert sum(cluster.allocation.alloc.worst_case_a(now).values()) <= 40.0 + 1e-6

        # 4. plans in Redis
        sid = f"CP2/1/{start2.transaction_id}"
        await wait_for(lambda: cluster.allocation.alloc.last is not None, what="a plan")
        for _ in range(100):
            raw = await redis_store.get(f"allocation:plan:session:{sid}")
            if raw is not None:
                break
            await asyncio.sleep(0.1)
        assert raw is not None
        sp = plan_pb2.SessionPlan()
        sp.ParseFromString(raw)
        assert sp.station_id == "CP2" and sp.step_s == 900 and len(sp.current_a) > 0

        # 5. the session ends: CP2's car wants the room, so CP1's lease goes back down (a lease nobody
        #    needs would simply lapse at the end of its epoch: no write)
        #    within a write interval (60 s) and a cycle, wherever the lease epoch stands
        def in_force(cp: Station16) -> float:
            """The cap the station applies now: its latest lease while valid, else its latest fallback."""
            caps = cp.of("ChargePointMaxProfile", 1)
            if caps and datetime.fromisoformat(caps[-1][1]["valid_to"]).timestamp() > time.time():
                return latest(cp)
            return float(
                cp.of("ChargePointMaxProfile", 0)[-1][1]["charging_schedule"]["charging_schedule_period"][0]["limit"]
            )

        assert latest(cp2) <= 40.0 - 32.0 + 1e-6
        stopped = time.monotonic()
        await cp1.call(call16.StopTransaction(meter_stop=5000, timestamp="2026-06-01T11:00:00Z", transaction_id=tx1))
        await wait_for(lambda: in_force(cp1) <= 6.0, what="CP1 lease taken back", timeout=75)
        await wait_for(
            lambda: latest(cp2) >= 32.0, what="CP2 raised into the room", timeout=75 - (time.monotonic() - stopped)
        )
        assert in_force(cp1) + in_force(cp2) <= 40.0 + 1e-6


async def test_leader_failover_on_kafka_and_redis(kafka_bus: KafkaBus, redis_store: RedisStore) -> None:
    """Two allocators: only the leader commands; when it stops, the standby takes over and commands."""
    from gridcharge.command.v1 import command_pb2
    from gridcharge.shared.bus.base import Record
    from gridcharge.shared.config import Settings
    from gridcharge.shared.contracts import COMMANDS, STATION_EVENTS
    from gridcharge.station.v1 import station_pb2

    cfg = AllocatorConfig(
        plan_interval_s=2.0, debounce_s=0.2, leases=LeasePolicy(epoch_s=60.0, renew_lead_s=10.0, clock_skew_s=1.0)
    )
    services = []
    for name in ("alloc-a", "alloc-b"):
        rt = Runtime(
            settings=Settings(bus="kafka", replica_id=name), bus=kafka_bus, store=redis_store, clock=RealClock()
        )
        svc = AllocationService(rt, TOPOLOGY, cfg, leader_ttl_s=3.0, tick_s=0.2)
        await svc.start()
        services.append(svc)
    a, b = services
    seen: list[command_pb2.StationCommand] = []

    async def on_cmd(rec: Record) -> None:
        cmd = command_pb2.StationCommand()
        cmd.ParseFromString(rec.value)
        seen.append(cmd)

    sub = await kafka_bus.subscribe([COMMANDS.name], "it-observer", on_cmd)
    try:
        for s in (*a._subs, *b._subs, sub):
            await s.wait_assigned(60)
        assert a.leader.is_leader and not b.leader.is_leader
        ev = station_pb2.StationEvent(station_id="CP1", connected=station_pb2.Connected(replica_id="gw-x"))
        await kafka_bus.publish(STATION_EVENTS.name, "CP1", ev.SerializeToString())
        await wait_for(lambda: bool(seen), what="a fallback from the leader")
        await asyncio.sleep(2.0)
        assert {c.meta.producer for c in seen} == {"allocation/alloc-a"}
        n = len(seen)
        await a.stop()  # clean stop releases the lease
        await wait_for(lambda: b.leader.is_leader, timeout=20, what="standby takes over")
        ev2 = station_pb2.StationEvent(station_id="CP2", connected=station_pb2.Connected(replica_id="gw-x"))
        await kafka_bus.publish(STATION_EVENTS.name, "CP2", ev2.SerializeToString())
        await wait_for(
            lambda: any(c.meta.producer == "allocation/alloc-b" for c in seen[n:]), what="commands from the new leader"
        )
        gens = [c.generation for c in seen if c.station_id == "CP1" and c.command_key.endswith("/0")]
        assert gens == sorted(gens)
    finally:
        await sub.stop()
        for svc in services:
            with contextlib.suppress(Exception):
                await svc.stop()
