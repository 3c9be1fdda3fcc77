"""Simulated stations against a minimal CSMS built on the same `ocpp` library (loopback WebSocket)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from gridcharge.shared.clock import SimClock
from gridcharge.shared.topology import Station
from gridcharge.simulator.ev import Ev
from gridcharge.simulator.stations import Quirks, StationClient, StationModel
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cs16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v201 import ChargePoint as Cs201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from websockets.typing import Subprotocol


class Csms16(Cs16):
    seen: list[str]

    @on("BootNotification")
    async def boot(self, **_: Any) -> Any:
        self.seen.append("Boot")
        return r16.BootNotification(current_time="2026-06-01T00:00:00Z", interval=300, status="Accepted")

    @on("StatusNotification")
    async def status(self, **_: Any) -> Any:
        return r16.StatusNotification()

    @on("StartTransaction")
    async def start_tx(self, **_: Any) -> Any:
        self.seen.append("Start")
        return r16.StartTransaction(transaction_id=77, id_tag_info={"status": "Accepted"})

    @on("MeterValues")
    async def meter(self, meter_value: list[dict[str, Any]], **_: Any) -> Any:
        self.seen.append("Meter")
        return r16.MeterValues()

    @on("StopTransaction")
    async def stop_tx(self, **_: Any) -> Any:
        self.seen.append("Stop")
        return r16.StopTransaction()


class Csms201(Cs201):
    seen: list[str]

    @on("BootNotification")
    async def boot(self, **_: Any) -> Any:
        return r201.BootNotification(current_time="2026-06-01T00:00:00Z", interval=300, status="Accepted")

    @on("StatusNotification")
    async def status(self, **_: Any) -> Any:
        return r201.StatusNotification()

    @on("TransactionEvent")
    async def tx(self, event_type: str, **_: Any) -> Any:
        self.seen.append(event_type)
        return r201.TransactionEvent()

    @on("NotifyEVChargingNeeds")
    async def needs(self, charging_needs: dict[str, Any], **_: Any) -> Any:
        self.seen.append(f"Needs:{charging_needs['ac_charging_parameters']['energy_amount']}")
        return r201.NotifyEVChargingNeeds(status="Accepted")


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_station_boots_obeys_profiles_and_reports(version: str) -> None:
    clock = SimClock()
    conns: dict[str, Any] = {}
    ready = asyncio.Event()

    async def handler(ws: Any) -> None:
        cls = Csms201 if version == "2.0.1" else Csms16
        cs = cls(ws.request.path.rsplit("/", 1)[-1], ws)
        cs.seen = []
        conns["cs"] = cs
        ready.set()
        await cs.start()

    subs = [Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")]
    async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=subs) as server:
        port = server.sockets[0].getsockname()[1]
        st = Station(id="S1", node="n", ocpp=version, max_current_a=32, fallback_current_a=6)
        model = StationModel(st, quirks=Quirks(rate_units=("A",)))
        client = StationClient(model, [f"ws://127.0.0.1:{port}/ocpp"], clock, meter_interval_s=60)
        client.start()
        await asyncio.wait_for(client.connected.wait(), 5)
        cs = conns["cs"]
        now = clock.time()
        client.plug_in(1, Ev("ev1", 50_000, 0.2, 0.8, now, now + 3600 * 8, max_current_a=16), now)
        await client.tick(now)
        # the station-wide fallback, then a Tx lease; W is rejected (A-only quirk)
        if version == "2.0.1":
            fallback = c201.SetChargingProfile(
                evse_id=0,
                charging_profile={
                    "id": 1,
                    "stack_level": 0,
                    "charging_profile_purpose": "TxDefaultProfile",
                    "charging_profile_kind": "Absolute",
                    "charging_schedule": [
                        {
                            "id": 1,
                            "charging_rate_unit": "A",
                            "start_schedule": "2026-01-01T00:00:00Z",
                            "charging_schedule_period": [{"start_period": 0, "limit": 6.0}],
                        }
                    ],
                },
            )
            tx_id = model.evses[1].tx.transaction_id  # type: ignore[union-attr]
            lease = c201.SetChargingProfile(
                evse_id=1,
                charging_profile={
                    "id": 2,
                    "stack_level": 1,
                    "charging_profile_purpose": "TxProfile",
                    "transaction_id": tx_id,
                    "charging_profile_kind": "Relative",
                    "charging_schedule": [
                        {
                            "id": 1,
                            "charging_rate_unit": "A",
                            "duration": 120,
                            "charging_schedule_period": [{"start_period": 0, "limit": 12.0}],
                        }
                    ],
                },
            )
            watts = c201.SetChargingProfile(
                evse_id=1,
                charging_profile={
                    "id": 3,
                    "stack_level": 2,
                    "charging_profile_purpose": "TxProfile",
                    "transaction_id": tx_id,
                    "charging_profile_kind": "Relative",
                    "charging_schedule": [
                        {
                            "id": 1,
                            "charging_rate_unit": "W",
                            "charging_schedule_period": [{"start_period": 0, "limit": 4000.0}],
                        }
                    ],
                },
            )
        else:
            fallback = c16.SetChargingProfile(
                connector_id=0,
                cs_charging_profiles={
                    "charging_profile_id": 1,
                    "stack_level": 0,
                    "charging_profile_purpose": "TxDefaultProfile",
                    "charging_profile_kind": "Absolute",
                    "charging_schedule": {
                        "charging_rate_unit": "A",
                        "start_schedule": "2026-01-01T00:00:00Z",
                        "charging_schedule_period": [{"start_period": 0, "limit": 6.0}],
                    },
                },
            )
            lease = c16.SetChargingProfile(
                connector_id=1,
                cs_charging_profiles={
                    "charging_profile_id": 2,
                    "stack_level": 1,
                    "charging_profile_purpose": "TxProfile",
                    "transaction_id": 77,
                    "charging_profile_kind": "Relative",
                    "charging_schedule": {
                        "charging_rate_unit": "A",
                        "duration": 120,
                        "charging_schedule_period": [{"start_period": 0, "limit": 12.0}],
                    },
                },
            )
            watts = c16.SetChargingProfile(
                connector_id=1,
                cs_charging_profiles={
                    "charging_profile_id": 3,
                    "stack_level": 2,
                    "charging_profile_purpose": "TxProfile",
                    "charging_profile_kind": "Relative",
                    "charging_schedule": {
                        "charging_rate_unit": "W",
                        "charging_schedule_period": [{"start_period": 0, "limit": 4000.0}],
                    },
                },
            )
        assert (await cs.call(fallback)).status == "Accepted"
        assert (await cs.call(lease)).status == "Accepted"
        assert (await cs.call(watts)).status == "Rejected"
        model.step(clock.time(), 10)
        assert model.evses[1].current_a == 12.0 and model.grid_currents_a() == (12.0, 12.0, 12.0)
        await clock.advance(130)  # the lease expires: fallback to 6 A by itself
        model.step(clock.time(), 10)
        assert model.evses[1].current_a == 6.0
        await client.tick(clock.time())
        await asyncio.sleep(0.05)
        if version == "2.0.1":
            assert "Started" in cs.seen and "Updated" in cs.seen and any(s.startswith("Needs:") for s in cs.seen)
        else:
            assert cs.seen[:3] == ["Boot", "Start", "Meter"]
        await client.stop()


class SwallowsOneCancel(StationClient):
    """A station whose connect-time work swallows one cancellation, as Python 3.11's asyncio.wait_for (in
    the `ocpp` library's call) does when the answer arrives with the cancellation."""

    async def _on_connected(self) -> None:
        self.connected.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass


async def test_stop_ends_a_station_that_swallowed_the_cancellation() -> None:
    async def silent(ws: Any) -> None:
        await ws.wait_closed()

    async with websockets.serve(silent, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")]) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        station = Station(id="CP9", node="site")
        client = SwallowsOneCancel(StationModel(station), [f"ws://127.0.0.1:{port}"], SimClock())
        client.start()
        await asyncio.wait_for(client.connected.wait(), 5)
        stopping = asyncio.ensure_future(client.stop())
        done, _ = await asyncio.wait({stopping}, timeout=8)  # not wait_for: its own cancel would free the task
        assert stopping in done, "stop() hangs on a station that swallowed the cancellation"
        assert client._task is not None and client._task.done()
