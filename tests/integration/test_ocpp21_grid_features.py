"""OCPP 2.1 grid features and the closed-loop profile check, end to end: the simulator's stations (real OCPP
1.6J / 2.0.1 / 2.1 clients on the `ocpp` library, with a real profile stack) over real WebSockets to the gateway,
the allocation service planning for them, embedded (in-process bus and store, as `gridcharge serve` runs on a
site controller). A station that answers Accepted and installs nothing is found by the check and budgeted at
its worst case; a local EMS's NotifyChargingLimit caps its station and shows as the binding constraint until
ClearedChargingLimit; a 2.1 NotifyPriorityCharging serves that session first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from gridcharge.allocation.core.allocator import AllocatorConfig
from gridcharge.allocation.core.leases import LeasePolicy, WritePolicy
from gridcharge.allocation.service import AllocationService
from gridcharge.gateway.adapters.metrics import PROFILE_MISMATCHES
from gridcharge.gateway.config import GatewaySettings
from gridcharge.gateway.service import GatewayService
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.clock import RealClock
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.memory import MemoryStore
from gridcharge.shared.topology import Topology, parse_topology
from gridcharge.simulator.ev import Ev
from gridcharge.simulator.stations import Quirks, StationClient, StationModel
from ocpp.v21 import call as call21

V = 230.0


def topology(versions: dict[str, str], limit_a: float = 24.0) -> Topology:
    return parse_topology(
        {
            "nominal_voltage_v": V,
            "nodes": [{"id": "site", "kind": "site", "limit_a": [limit_a] * 3, "safety_margin_pct": 0}],
            "stations": [
                {"id": sid, "node": "site", "max_current_a": 16, "fallback_current_a": 6, "ocpp": ver}
                for sid, ver in versions.items()
            ],
        }
    )


@dataclass
class Site:
    gateway: GatewayService
    allocation: AllocationService
    clients: dict[str, StationClient]
    clock: RealClock
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def api(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """The gateway's operator API (GET, or POST with `body`); the auth edge is tested elsewhere."""
        app = FastAPI()
        for r in self.gateway.routers:
            app.include_router(r)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            return await (c.get(path) if body is None else c.post(path, json=body))

    def plug(self, sid: str, need_wh: float = 50_000.0) -> None:
        now = self.clock.time()
        self.clients[sid].plug_in(
            1, Ev(f"ev-{sid}", 60_000.0, 0.2, 0.2 + need_wh / 60_000.0, now, now + 7200.0, max_current_a=16.0), now
        )


async def wait_for(pred: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def site(topo: Topology, quirks: dict[str, Quirks] | None = None) -> AsyncIterator[Site]:
    clock = RealClock()
    bus = MemoryBus()
    await bus.start()
    settings = GatewaySettings(
        ocpp_port=0,
        ocpp_host="127.0.0.1",
        replica_id="gw-21",
        call_timeout_s=5.0,
        profile_check_delay_s=0.5,
        profile_audit_interval_s=0,
    )
    rt = Runtime(settings=settings, bus=bus, store=MemoryStore(clock), clock=clock)
    gw = GatewayService(rt, topo, settings)
    cfg = AllocatorConfig(
        plan_interval_s=2.0,
        debounce_s=0.2,
        failsafe_hold_s=2.0,
        leases=LeasePolicy(epoch_s=120.0, renew_lead_s=20.0, clock_skew_s=2.0),
        writes=WritePolicy(min_interval_s=1.0, max_per_hour=600, raise_hold_s=1.0),
    )
    alloc = AllocationService(rt, topo, cfg, tick_s=0.2)
    await gw.start()
    await alloc.start()
    url = f"ws://127.0.0.1:{gw.ocpp_port}/ocpp"
    clients = {}
    for st in topo.stations:
        model = StationModel(st, V, (quirks or {}).get(st.id, Quirks()))
        clients[st.id] = StationClient(model, [url], clock, meter_interval_s=1.0, response_timeout_s=5.0)
    s = Site(gw, alloc, clients, clock)

    async def drive(c: StationClient) -> None:
        while True:
            now = clock.time()
            c.model.step(now, 0.2)
            await c.tick(now)
            await asyncio.sleep(0.2)

    for c in clients.values():
        c.start()
        s.tasks.append(asyncio.create_task(drive(c)))
    await wait_for(lambda: all(c.connected.is_set() for c in clients.values()), what="stations connected")
    try:
        yield s
    finally:
        for t in s.tasks:
            t.cancel()
        for c in clients.values():
            await c.stop()
        await alloc.stop()
        await gw.stop()
        await bus.stop()


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_the_check_finds_a_station_that_ignores_its_profiles(version: str) -> None:
    before = {k: PROFILE_MISMATCHES.labels(kind=k)._value.get() for k in ("missing", "composite_higher")}
    topo = topology({"GOOD": version, "DEAF": version})
    async with site(topo, {"DEAF": Quirks(ignores_profiles=True)}) as s:
        checks: dict[str, dict] = {}

        async def poll() -> None:
            for sid in ("GOOD", "DEAF"):
                r = await s.api(f"/api/v1/stations/{sid}/profile-check")
                if r.status_code == 200:
                    checks[sid] = r.json()

        deadline = asyncio.get_running_loop().time() + 30
        while len(checks) < 2 and asyncio.get_running_loop().time() < deadline:
            await poll()
            await asyncio.sleep(0.2)
        assert set(checks) == {"GOOD", "DEAF"}, checks
        # the honest station holds its fallback: the check reads it back (2.x: the report; all: the composite)
        assert checks["GOOD"]["ok"] and checks["GOOD"]["complete"], checks["GOOD"]
        assert s.clients["GOOD"].model.profiles.profiles  # it really holds one
        # the deaf one accepted the fallback and holds nothing: the composite allows its hardware 16 A, not 6
        deaf = checks["DEAF"]
        assert not deaf["ok"] and deaf["complete"]
        kinds = {m["kind"] for m in deaf["mismatches"]}
        assert "composite_higher" in kinds
        if version != "1.6":
            assert "missing" in kinds  # GetChargingProfiles: NoProfiles
        comp = next(m for m in deaf["mismatches"] if m["kind"] == "composite_higher")
        assert (comp["sent_limit"], comp["reported_limit"], comp["rate_unit"]) == (6.0, 16.0, "A")
        assert PROFILE_MISMATCHES.labels(kind="composite_higher")._value.get() > before["composite_higher"]
        # the allocator: worst case for the deaf station, its fallback sent again
        led = s.allocation.alloc.ledgers["DEAF"]
        await wait_for(lambda: led.last_failure.startswith("profile check"), what="allocator told of the mismatch")
        await wait_for(lambda: s.clients["DEAF"].stats.profiles_accepted >= 2, what="fallback re-sent")
        assert s.allocation.alloc.ledgers["GOOD"].last_failure == ""
        r = await s.api("/api/v1/stations/NOBODY/profile-check")
        assert r.status_code == 404


async def test_21_ems_limit_binds_until_cleared() -> None:
    topo = topology({"A": "2.1", "B": "2.1"}, limit_a=40.0)  # room for both cars at 16 A
    async with site(topo) as s:
        alloc = s.allocation.alloc
        s.plug("A")
        s.plug("B")
        await wait_for(lambda: "A/1" in alloc.grant_a and "B/1" in alloc.grant_a, what="both sessions planned")
        # a local EMS limits station A to 8 A on L2 (2.1 per-phase limits)
        cp = s.clients["A"]
        # (raw: the `ocpp` library's typed call spells limit_L2 as limitL2, which the 2.1 schema refuses)
        r = await cp.raw_call(
            "NotifyChargingLimit",
            {
                "chargingLimit": {"chargingLimitSource": "EMS", "isGridCritical": False},
                "evseId": 0,
                "chargingSchedule": [
                    {
                        "id": 1,
                        "chargingRateUnit": "A",
                        "chargingSchedulePeriod": [
                            {"startPeriod": 0, "limit": 10.0, "limit_L2": 8.0, "limit_L3": 10.0}
                        ],
                    }
                ],
            },
        )
        assert r == {}

        def explained() -> Any:
            last = alloc.last
            return next(
                (e for e in (last.explanations.values() if last else []) if e.session_id.startswith("A/")), None
            )

        def bound_by_ems() -> bool:
            ex = explained()
            return ex is not None and ex.binding is not None and ex.binding.source == "ocpp-ems"

        await wait_for(lambda: alloc.station_limit_a("A", 1, s.clock.time()) == 8.0, what="EMS limit applied")
        await wait_for(bound_by_ems, what="binding constraint shows the EMS")
        # planned within the EMS limit (the lowest phase); the lease is not written down while nobody needs the
        # room (calm control law: the station enforces its EMS limit itself, a write costs flash) — with
        # contention it is (test_21_priority_charging_goes_first: 24 A for two cars)
        assert explained().planned_a <= 8.0 + 1e-9
        assert alloc.grant_a["B/1"] == 16.0
        # cleared: A may have its 16 A share again
        cleared = await cp._call(call21.ClearedChargingLimit(charging_limit_source="EMS"))
        assert cleared is not None
        await wait_for(lambda: alloc.station_limit_a("A", 1, s.clock.time()) == float("inf"), what="limit cleared")
        await wait_for(lambda: explained().planned_a == 16.0 and not bound_by_ems(), what="A planned at 16 A again")
        assert alloc.grant_a["A/1"] == 16.0


async def test_21_priority_charging_goes_first() -> None:
    topo = topology({"A": "2.1", "B": "2.1"}, limit_a=24.0)
    async with site(topo) as s:
        alloc = s.allocation.alloc
        s.plug("A")
        s.plug("B")
        await wait_for(
            lambda: (
                "A/1" in alloc.grant_a
                and "B/1" in alloc.grant_a
                and alloc.grant_a["A/1"] + alloc.grant_a["B/1"] >= 23.9
            ),
            what="both sessions planned",
        )
        # 24 A for two 16 A cars: priority charging on whichever gets less puts it at its 16 A
        low = min(("A", "B"), key=lambda sid: alloc.grant_a[f"{sid}/1"])
        high = "A" if low == "B" else "B"
        assert alloc.grant_a[f"{low}/1"] < 16.0
        assert await s.clients[low].notify_priority(1, True)
        await wait_for(lambda: alloc.grant_a[f"{low}/1"] == 16.0, what="priority session served first")
        assert alloc.grant_a[f"{high}/1"] <= 8.0 + 1e-9
        assert alloc.book.find(low, 1).priority == alloc.cfg.priority_charging_level  # type: ignore[union-attr]
        # the CSMS side: an operator stops it with UsePriorityCharging; the station confirms with
        # NotifyPriorityCharging(activated=false) and the session is back at its own priority
        tx = s.clients[low].model.evses[1].tx
        assert tx is not None
        r = await s.api(
            f"/api/v1/stations/{low}/commands/use_priority_charging?timeout_s=10",
            {"transaction_id": tx.transaction_id, "activate": False},
        )
        assert r.status_code == 200 and r.json()["outcome"] == "COMMAND_OUTCOME_ACCEPTED", r.text
        await wait_for(
            lambda: alloc.book.find(low, 1).priority == 1,  # type: ignore[union-attr]
            what="priority back after UsePriorityCharging(false)",
        )
        # not a 2.1 transaction: the station refuses, nothing changes
        r = await s.api(
            f"/api/v1/stations/{high}/commands/use_priority_charging?timeout_s=10",
            {"transaction_id": "no-such-tx", "activate": True},
        )
        assert r.json()["outcome"] == "COMMAND_OUTCOME_REJECTED", r.text
