"""The walking skeleton (issue 2): an OCPP 1.6J station connects to the gateway, boots and starts a
transaction; the event reaches the allocation service over the bus; the allocation service emits a
charging-profile command that keeps the site under its limit; the gateway delivers SetChargingProfile on
the station's socket; the station accepts; the result flows back over the bus.

Run twice: on real Kafka + Redis (gateway and allocation with separate Kafka clients and Redis
connections, as separate services would be), and on the in-process bus and store (embedded mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from gridcharge.allocation.main import create_service as create_allocation
from gridcharge.command.v1 import command_pb2
from gridcharge.gateway.main import create_service as create_gateway
from gridcharge.shared.bus.base import Record
from gridcharge.shared.config import Settings
from gridcharge.shared.contracts import COMMAND_RESULTS, COMMANDS, STATION_EVENTS, decode
from gridcharge.shared.runtime import Runtime, build_runtime
from gridcharge.shared.service import Host
from gridcharge.shared.topology import parse_topology
from gridcharge.station.v1 import station_pb2
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as res16
from websockets.asyncio.client import connect

pytestmark = pytest.mark.timeout(120)

SITE_LIMIT_A = 40.0
CP2_MAX_A = 16.0
# CP2 never connects: unknown means worst case, so it is budgeted at its hardware maximum and CP1 may
# get at most SITE_LIMIT_A - CP2_MAX_A.
TOPOLOGY = parse_topology(
    {
        "nodes": [{"id": "site", "kind": "site", "limit_a": [SITE_LIMIT_A] * 3}],
        "stations": [
            {"id": "CP1", "node": "site", "max_current_a": 32, "fallback_current_a": 6},
            {"id": "CP2", "node": "site", "max_current_a": CP2_MAX_A, "fallback_current_a": 6},
        ],
    }
)


class Station(Cp16):
    """A plain `ocpp` library 1.6 station that accepts every profile and reports a capability set."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.profiles: list[dict[str, Any]] = []

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        self.profiles.append({"connector_id": connector_id, **cs_charging_profiles})
        return res16.SetChargingProfile(status="Accepted")

    @on("GetConfiguration")
    async def on_get_configuration(self, key: list[str] | None = None) -> Any:
        return res16.GetConfiguration(
            configuration_key=[
                {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "8"},
                {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Current,Power"},
                {"key": "ChargingScheduleMaxPeriods", "readonly": True, "value": "24"},
                {"key": "MaxChargingProfilesInstalled", "readonly": True, "value": "10"},
            ]
        )

    @on("ClearChargingProfile")
    async def on_clear(self, **_: Any) -> Any:
        return res16.ClearChargingProfile(status="Accepted")

    @on("TriggerMessage")
    async def on_trigger(self, **_: Any) -> Any:
        return res16.TriggerMessage(status="Rejected")


@dataclass
class Observed:
    events: list[station_pb2.StationEvent] = field(default_factory=list)
    commands: list[command_pb2.StationCommand] = field(default_factory=list)
    results: list[command_pb2.CommandResult] = field(default_factory=list)


async def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def observe(rt: Runtime) -> Observed:
    """A separate consumer group that watches the skeleton's topics on the bus."""
    seen = Observed()

    async def on_record(r: Record) -> None:
        if r.topic == STATION_EVENTS.name:
            seen.events.append(decode(station_pb2.StationEvent, r.value))
        elif r.topic == COMMANDS.name:
            seen.commands.append(decode(command_pb2.StationCommand, r.value))
        elif r.topic == COMMAND_RESULTS.name:
            seen.results.append(decode(command_pb2.CommandResult, r.value))

    sub = await rt.bus.subscribe(
        [STATION_EVENTS.name, COMMANDS.name, COMMAND_RESULTS.name], f"observer-{uuid.uuid4().hex[:6]}", on_record
    )
    await sub.wait_assigned()
    return seen


@contextlib.asynccontextmanager
async def cluster(mode: str, request: pytest.FixtureRequest) -> AsyncIterator[tuple[int, Runtime]]:
    """Gateway + allocation; on Kafka each has its own runtime (own Kafka clients, own Redis connection)."""
    if mode == "kafka":
        run = uuid.uuid4().hex[:8]
        common = {
            "bus": "kafka",
            "kafka_bootstrap": request.getfixturevalue("kafka_bootstrap"),
            "redis_url": request.getfixturevalue("redis_url"),
            "topic_prefix": f"skel{run}.",
            "store_prefix": f"skel{run}:",
            "ocpp_port": 0,
            "http_port": 0,
            "ocpp_host": "127.0.0.1",
        }
        rt_gw = build_runtime(Settings.from_env({}, replica_id="gw-0", **common))
        rt_alloc = build_runtime(Settings.from_env({}, replica_id="alloc-0", **common))
        rt_obs = build_runtime(Settings.from_env({}, replica_id="observer", **common))
    else:
        rt_gw = build_runtime(Settings.from_env({}, bus="memory", ocpp_port=0, http_port=0, ocpp_host="127.0.0.1"))
        rt_alloc = rt_obs = rt_gw
    gateway = create_gateway(rt_gw, TOPOLOGY)
    allocation = create_allocation(rt_alloc, TOPOLOGY)
    hosts = [Host(rt_gw, [gateway], http=False)]
    if rt_alloc is rt_gw:
        hosts[0].services.append(allocation)
    else:
        hosts.append(Host(rt_alloc, [allocation], http=False))
    for h in hosts:
        await h.start()
    if rt_obs is not rt_gw:
        await rt_obs.bus.start()
    try:
        yield gateway.ocpp_port, rt_obs
    finally:
        for h in reversed(hosts):
            await h.stop()
        if rt_obs is not rt_gw:
            await rt_obs.bus.stop()
            await rt_obs.store.close()


@pytest.mark.parametrize("mode", [pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.redis]), "memory"])
async def test_station_session_gets_a_charging_profile_back(mode: str, request: pytest.FixtureRequest) -> None:
    async with cluster(mode, request) as (port, rt_obs):
        seen = await observe(rt_obs)
        async with connect(f"ws://127.0.0.1:{port}/ocpp/CP1", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            cp = Station("CP1", ws)
            runner = asyncio.create_task(cp.start())
            boot = await cp.call(call16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
            assert boot.status == "Accepted"
            await cp.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
            start = await cp.call(
                call16.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0, timestamp="2026-06-01T10:00:00Z")
            )
            assert start.id_tag_info["status"] == "Accepted"
            tx_id = start.transaction_id

            # the station event went over the bus ...
            await wait_for(
                lambda: any(
                    e.WhichOneof("payload") == "transaction_started" and e.station_id == "CP1" for e in seen.events
                ),
                what="TransactionStarted on the bus",
            )

            # ... the allocator answered with a station-cap lease (its only EVSE's grant) within the site limit ...
            def lease(p: dict[str, Any]) -> bool:
                return p.get("charging_profile_purpose") == "ChargePointMaxProfile" and p.get("stack_level") == 1

            await wait_for(lambda: any(lease(p) for p in cp.profiles), what="station-cap lease at the station")
            grant = next(p for p in cp.profiles if lease(p))
            assert "valid_to" in grant and tx_id
            schedule = grant["charging_schedule"]
            unit = schedule["charging_rate_unit"]
            limits = [period["limit"] for period in schedule["charging_schedule_period"]]
            allowed_a = SITE_LIMIT_A - CP2_MAX_A
            allowed = allowed_a if unit == "A" else allowed_a * 230 * 3
            assert 6 <= max(limits) <= allowed, (unit, limits)
            assert any(
                c.WhichOneof("payload") == "set_charging_profile" and c.station_id == "CP1" for c in seen.commands
            )
            # ... and the station's acceptance came back as a command result on the bus.
            await wait_for(
                lambda: any(
                    r.station_id == "CP1"
                    and r.action == "SetChargingProfile"
                    and r.outcome == command_pb2.COMMAND_OUTCOME_ACCEPTED
                    for r in seen.results
                ),
                what="accepted CommandResult on the bus",
            )
            runner.cancel()
