"""The `ocpp` library's own ChargePoint as the station (it validates what it receives against the
official schemas): the walking-skeleton path for 1.6 and 2.0.1 over the in-process bus."""

from __future__ import annotations

import asyncio
from typing import Any

from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.shared.contracts import COMMANDS
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as res16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as res201
from websockets.asyncio.client import connect

from .conftest import Gateway
from .test_end_to_end import collect_results

Oc = command_pb2.CommandOutcome


class Station16(Cp16):
    profiles: list[dict[str, Any]]

    @on("SetChargingProfile")
    async def on_scp(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        self.profiles.append(cs_charging_profiles)
        return res16.SetChargingProfile(status="Accepted")

    @on("GetConfiguration")
    async def on_gc(self, key: list[str] | None = None) -> Any:
        return res16.GetConfiguration(
            configuration_key=[
                {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "5"},
                {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Current,Power"},
            ]
        )


class Station201(Cp201):
    profiles: list[dict[str, Any]]

    @on("SetChargingProfile")
    async def on_scp(self, evse_id: int, charging_profile: dict[str, Any]) -> Any:
        self.profiles.append(charging_profile)
        return res201.SetChargingProfile(status="Accepted")


def scp(station: str, tx: str, evse: int = 1) -> command_pb2.StationCommand:
    cmd = command_pb2.StationCommand(command_id=f"lib-{station}", station_id=station, generation=1, command_key="tx")
    cmd.set_charging_profile.evse_id = evse
    p = cmd.set_charging_profile.profile
    p.profile_id, p.stack_level, p.purpose, p.kind, p.transaction_id = (
        2,
        1,
        command_pb2.PROFILE_PURPOSE_TX,
        "Relative",
        tx,
    )
    p.rate_unit = common_pb2.RATE_UNIT_W
    p.periods.add(start_period_s=0, limit=7400.06)
    p.periods.add(start_period_s=600, limit=3700)
    return cmd


async def test_ocpp_library_station_16(gateway: Gateway) -> None:
    results = await collect_results(gateway)
    async with connect(gateway.url + "CP7", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        cp = Station16("CP7", ws)
        cp.profiles = []
        task = asyncio.create_task(cp.start())
        boot = await cp.call(call16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        assert boot.status == "Accepted"
        start = await cp.call(
            call16.StartTransaction(connector_id=1, id_tag="T", meter_start=0, timestamp="2026-06-01T10:00:00Z")
        )
        await gateway.bus.publish(COMMANDS.name, "CP7", scp("CP7", str(start.transaction_id)).SerializeToString())
        await gateway.wait_for(lambda: len(results) == 1)
        assert results[0].outcome == Oc.COMMAND_OUTCOME_ACCEPTED, results[0]
        assert cp.profiles[0]["charging_schedule"]["charging_schedule_period"][0]["limit"] == 7400.0
        task.cancel()


async def test_ocpp_library_station_201(gateway: Gateway) -> None:
    results = await collect_results(gateway)
    async with connect(gateway.url + "CS1", subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        cp = Station201("CS1", ws)
        cp.profiles = []
        task = asyncio.create_task(cp.start())
        boot = await cp.call(
            call201.BootNotification(charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp")
        )
        assert boot.status == "Accepted"
        await cp.call(
            call201.TransactionEvent(
                event_type="Started",
                timestamp="2026-06-01T10:00:00Z",
                trigger_reason="CablePluggedIn",
                seq_no=0,
                transaction_info={"transaction_id": "abc"},
                evse={"id": 1, "connector_id": 1},
            )
        )
        needs = await cp.call(
            call201.NotifyEVChargingNeeds(
                evse_id=1,
                charging_needs={
                    "requested_energy_transfer": "AC_three_phase",
                    "departure_time": "2026-06-01T17:00:00Z",
                    "ac_charging_parameters": {
                        "energy_amount": 20000,
                        "ev_min_current": 6,
                        "ev_max_current": 16,
                        "ev_max_voltage": 400,
                    },
                },
            )
        )
        assert needs.status == "Accepted"
        await gateway.bus.publish(COMMANDS.name, "CS1", scp("CS1", "abc").SerializeToString())
        await gateway.wait_for(lambda: len(results) == 1)
        assert results[0].outcome == Oc.COMMAND_OUTCOME_ACCEPTED, results[0]
        assert cp.profiles[0]["transaction_id"] == "abc"
        ev = next(e for e in gateway.events if e.WhichOneof("payload") == "charging_needs")
        assert ev.charging_needs.energy_amount_wh == 20000 and ev.charging_needs.phases == 3
        assert ev.charging_needs.departure_time.seconds > 0
        task.cancel()
