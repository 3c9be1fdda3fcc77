"""The gateway over real WebSockets on loopback, in-process bus and store: boot, events, commands."""

from __future__ import annotations

import asyncio

from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.shared.bus.base import Record
from gridcharge.shared.contracts import COMMAND_RESULTS, COMMANDS, STATION_CAPABILITIES, decode
from gridcharge.station.v1 import station_pb2

from .conftest import BOOT_16, Gateway, booted, open_client

Oc = command_pb2.CommandOutcome


def tx_profile_cmd(
    station: str, tx: str, limit: float, gen: int = 1, command_id: str = "c1"
) -> command_pb2.StationCommand:
    cmd = command_pb2.StationCommand(
        command_id=command_id, station_id=station, generation=gen, command_key="profile/1/TxProfile"
    )
    sp = cmd.set_charging_profile
    sp.evse_id = 1
    p = sp.profile
    p.profile_id, p.stack_level, p.purpose, p.kind = 7, 1, command_pb2.PROFILE_PURPOSE_TX, "Relative"
    p.transaction_id = tx
    p.rate_unit = common_pb2.RATE_UNIT_A
    p.duration_s = 600
    p.periods.add(start_period_s=0, limit=limit)
    return cmd


async def collect_results(gw: Gateway) -> list[command_pb2.CommandResult]:
    results: list[command_pb2.CommandResult] = []

    async def on_result(rec: Record) -> None:
        results.append(decode(command_pb2.CommandResult, rec.value))

    await gw.bus.subscribe([COMMAND_RESULTS.name], "test-results", on_result)
    return results


async def test_boot_gating_and_transaction_flow_16(gateway: Gateway) -> None:
    c = await open_client(gateway, "CP1")
    res = await c.call("Heartbeat", {})
    assert res[0] == 4 and res[2] == "SecurityError"
    res = await c.call("BootNotification", BOOT_16)
    assert res[2]["status"] == "Accepted" and res[2]["interval"] == 300
    res = await c.call(
        "StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 100, "timestamp": "2026-06-01T10:00:00Z"}
    )
    tx = res[2]["transactionId"]
    assert isinstance(tx, int) and res[2]["idTagInfo"]["status"] == "Accepted"
    res = await c.call(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx,
            "meterValue": [
                {
                    "timestamp": "2026-06-01T10:01:00Z",
                    "sampledValue": [
                        {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
                        {"value": "10.5", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                        {"value": "31.5", "measurand": "Temperature", "unit": "Celsius"},
                        {"value": "55", "measurand": "SoC", "unit": "Percent", "location": "EV"},
                    ],
                }
            ],
        },
    )
    assert res[0] == 3
    await gateway.wait_for(lambda: len(gateway.meters) == 1)
    vals = {v.measurand: v for v in gateway.meters[0].values}
    assert vals["Power.Active.Import"].value == 7200.0 and vals["Power.Active.Import"].unit == "W"
    assert vals["Current.Import"].phase == "L1" and vals["SoC"].value == 55 and vals["Temperature"].value == 31.5
    res = await c.call("StopTransaction", {"transactionId": tx, "meterStop": 5000, "timestamp": "2026-06-01T11:00:00Z"})
    assert res[0] == 3
    await gateway.wait_for(lambda: "transaction_ended" in gateway.kinds("CP1"))
    assert gateway.kinds("CP1")[:3] == ["connected", "boot", "transaction_started"]
    await c.close()
    await gateway.wait_for(lambda: "disconnected" in gateway.kinds("CP1"))


async def test_command_delivered_and_result_published(gateway: Gateway) -> None:
    results = await collect_results(gateway)
    caps: list[station_pb2.StationCapabilities] = []

    async def on_caps(rec: Record) -> None:
        caps.append(decode(station_pb2.StationCapabilities, rec.value))

    await gateway.bus.subscribe([STATION_CAPABILITIES.name], "test-caps", on_caps)
    c = await booted(
        gateway,
        "CP2",
        answers={
            "GetConfiguration": {
                "configurationKey": [
                    {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "3"},
                    {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Current"},
                    {"key": "ChargingScheduleMaxPeriods", "readonly": True, "value": "5"},
                    {"key": "MaxChargingProfilesInstalled", "readonly": True, "value": "4"},
                    {"key": "NumberOfConnectors", "readonly": True, "value": "2"},
                ]
            },
            "SetChargingProfile": {"status": "Accepted"},
        },
    )
    await gateway.wait_for(lambda: len(caps) == 1)
    assert caps[0].max_stack_level == 3 and list(caps[0].allowed_rate_units) == [common_pb2.RATE_UNIT_A]
    assert caps[0].read_complete
    cmd = tx_profile_cmd("CP2", "42", 16.07)
    await gateway.bus.publish(COMMANDS.name, "CP2", cmd.SerializeToString())
    await gateway.wait_for(lambda: len(results) == 1)
    r = results[0]
    assert r.outcome == Oc.COMMAND_OUTCOME_ACCEPTED and r.status == "Accepted" and r.command_id == "c1"
    sent = next(m for m in c.received_calls if m[2] == "SetChargingProfile")
    prof = sent[3]["csChargingProfiles"]
    assert prof["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 16.0}]
    assert prof["transactionId"] == 42 and sent[3]["connectorId"] == 1
    # stack level above the station's maximum: INVALID, never sent
    bad = tx_profile_cmd("CP2", "42", 10, gen=2, command_id="c2")
    bad.set_charging_profile.profile.stack_level = 9
    await gateway.bus.publish(COMMANDS.name, "CP2", bad.SerializeToString())
    await gateway.wait_for(lambda: len(results) == 2)
    assert results[1].outcome == Oc.COMMAND_OUTCOME_INVALID and "stack level" in results[1].error_description
    # an older generation after a newer one was applied: SUPERSEDED
    old = tx_profile_cmd("CP2", "42", 10, gen=0, command_id="c3")
    await gateway.bus.publish(COMMANDS.name, "CP2", old.SerializeToString())
    await gateway.wait_for(lambda: len(results) == 3)
    assert results[2].outcome == Oc.COMMAND_OUTCOME_SUPERSEDED
    await c.close()


async def test_offline_timeout_and_call_error(gateway: Gateway) -> None:
    results = await collect_results(gateway)
    off = tx_profile_cmd("CP9", "1", 10, command_id="off")
    await gateway.bus.publish(COMMANDS.name, "CP9", off.SerializeToString())
    await gateway.wait_for(lambda: len(results) == 1)
    assert results[0].outcome == Oc.COMMAND_OUTCOME_OFFLINE
    gateway.service.settings.__dict__["call_timeout_s"] = 0.3
    c = await booted(gateway, "CP3")
    c.answers["SetChargingProfile"] = "ignore"
    await gateway.bus.publish(COMMANDS.name, "CP3", tx_profile_cmd("CP3", "5", 10, command_id="t1").SerializeToString())
    await gateway.wait_for(lambda: len(results) == 2)
    assert results[1].outcome == Oc.COMMAND_OUTCOME_TIMEOUT and results[1].status == "Unknown"
    c.answers["ClearChargingProfile"] = {"status": "Unknown"}
    clr = command_pb2.StationCommand(command_id="cl", station_id="CP3")
    clr.clear_charging_profile.profile_id = 7
    clr.clear_charging_profile.evse_id = -1
    clr.clear_charging_profile.stack_level = -1
    await gateway.bus.publish(COMMANDS.name, "CP3", clr.SerializeToString())
    await gateway.wait_for(lambda: len(results) == 3)
    assert results[2].outcome == Oc.COMMAND_OUTCOME_REJECTED and results[2].status == "Unknown"
    await c.close()
    await asyncio.sleep(0)


async def test_transaction_events_deduped_and_ordered_201(gateway: Gateway) -> None:
    c = await booted(gateway, "CS1", "ocpp2.0.1")

    def tx(kind: str, seq: int, state: str = "Charging") -> dict[str, object]:
        return {
            "eventType": kind,
            "timestamp": "2026-06-01T10:00:00Z",
            "triggerReason": "ChargingStateChanged",
            "seqNo": seq,
            "transactionInfo": {"transactionId": "T-9", "chargingState": state},
            "evse": {"id": 1, "connectorId": 1},
        }

    for step, seq in (("Started", 0), ("Updated", 2), ("Updated", 1), ("Updated", 1), ("Started", 0), ("Ended", 3)):
        res = await c.call("TransactionEvent", tx(step, seq))
        assert res[0] == 3, res
    await gateway.wait_for(lambda: "transaction_ended" in gateway.kinds("CS1"))
    seqs = []
    for e in gateway.events:
        kind = e.WhichOneof("payload")
        if e.station_id == "CS1" and kind is not None and kind.startswith("transaction_"):
            seqs.append(getattr(e, kind).seq_no)
    assert seqs == [0, 1, 2, 3]
    await c.close()
