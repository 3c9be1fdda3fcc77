"""OCPP 2.1 on the gateway (raw frames over a real WebSocket): the 2.0.1 core messages under the 2.1 subprotocol
and schemas, NotifyPriorityCharging, SetChargingProfile valid for 2.1; and the profile check against hostile
stations (a report that never comes, floods of reports, reports for requests nobody made)."""

from __future__ import annotations

import asyncio
from typing import Any

from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.core.schemas import validate
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.bus.base import Record
from gridcharge.shared.contracts import COMMANDS, EXTERNAL_LIMITS, decode

from .conftest import Gateway, booted, start_gateway
from .samples import V201
from .test_end_to_end import collect_results, tx_profile_cmd

Oc = command_pb2.CommandOutcome


def station_max_cmd(station: str, limit: float, command_id: str = "fb") -> command_pb2.StationCommand:
    cmd = command_pb2.StationCommand(command_id=command_id, station_id=station)
    sp = cmd.set_charging_profile
    sp.evse_id = 0
    p = sp.profile
    p.profile_id, p.stack_level, p.purpose, p.kind = 1000, 0, command_pb2.PROFILE_PURPOSE_STATION_MAX, "Absolute"
    p.rate_unit = common_pb2.RATE_UNIT_A
    p.periods.add(start_period_s=0, limit=limit)
    return cmd


async def test_21_core_messages_priority_and_profiles(gateway: Gateway) -> None:
    c = await booted(gateway, "CS1", "ocpp2.1", answers={"SetChargingProfile": {"status": "Accepted"}})
    for action in ("Heartbeat", "StatusNotification", "TransactionEvent", "MeterValues", "NotifyEVChargingNeeds"):
        res = await c.call(action, V201[action])
        assert res[0] == 3, (action, res)
    res = await c.call("NotifyPriorityCharging", {"transactionId": "tx-1", "activated": True})
    assert res[0] == 3 and res[2] == {}
    await gateway.wait_for(lambda: "priority_charging" in gateway.kinds("CS1"))
    ev = next(e for e in gateway.events if e.WhichOneof("payload") == "priority_charging")
    assert ev.priority_charging.transaction_id == "tx-1" and ev.priority_charging.activated
    assert ev.ocpp_version == 3  # OCPP_VERSION_21
    # hostile: a 2.1 message missing a required field, a 2.1-only action not handled here
    res = await c.call("NotifyPriorityCharging", {"transactionId": "tx-1"})
    assert res[0] == 4 and res[2] == "OccurrenceConstraintViolation"
    res = await c.call("NotifyDERAlarm", {"controlType": "FreqDroop", "timestamp": "2026-06-01T10:00:00Z"})
    assert res[0] == 4 and res[2] == "NotSupported"
    # 2.1 NotifyChargingLimit with per-phase limits → a station-scoped external limit
    limits: list[grid_pb2.ExternalLimit] = []

    async def on_limit(rec: Record) -> None:
        limits.append(decode(grid_pb2.ExternalLimit, rec.value))

    await gateway.bus.subscribe([EXTERNAL_LIMITS.name], "t-limits", on_limit)
    res = await c.call(
        "NotifyChargingLimit",
        {
            "chargingLimit": {"chargingLimitSource": "EMS"},
            "evseId": 1,
            "chargingSchedule": [
                {
                    "id": 1,
                    "chargingRateUnit": "A",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0, "limit_L2": 6.0, "limit_L3": 10.0}],
                }
            ],
        },
    )
    assert res[0] == 3
    await gateway.wait_for(lambda: bool(limits))
    assert limits[0].station_id == "CS1" and limits[0].limit_w.l2 == 6.0 * 230.0
    # a TxProfile goes out in the 2.0.1 shape, valid against the 2.1 schema
    results = await collect_results(gateway)
    await gateway.bus.publish(COMMANDS.name, "CS1", tx_profile_cmd("CS1", "tx-1", 16.0).SerializeToString())
    await gateway.wait_for(lambda: bool(results))
    assert results[0].outcome == Oc.COMMAND_OUTCOME_ACCEPTED
    sent = next(m for m in c.received_calls if m[2] == "SetChargingProfile")
    assert validate(Version.V21, "SetChargingProfile", "req", sent[3]) is None
    await c.close()


def report_answers(reports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "SetChargingProfile": {"status": "Accepted"},
        "GetChargingProfiles": {"status": "Accepted"},
        "GetCompositeSchedule": {
            "status": "Accepted",
            "schedule": {
                "evseId": 0,
                "duration": 300,
                "scheduleStart": "2026-06-01T10:00:00Z",
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6.0}],
            },
        },
    }


async def test_check_survives_a_station_that_never_reports() -> None:
    gw = await start_gateway(call_timeout_s=0.5, profile_check_delay_s=3600)
    try:
        c = await booted(gw, "CS1", "ocpp2.0.1", answers=report_answers([]))
        results = await collect_results(gw)
        await gw.bus.publish(COMMANDS.name, "CS1", station_max_cmd("CS1", 6.0).SerializeToString())
        await gw.wait_for(lambda: bool(results))
        sess = gw.service.sessions["CS1"]
        # Accepted, then no ReportChargingProfiles: incomplete, judged nothing, the socket and queue go on
        res = await gw.service.checker.check_now(sess)
        assert not res.complete and not res.mismatches and "GetChargingProfiles" in res.reason
        assert not sess.profile_reports  # nothing left waiting
        await gw.bus.publish(COMMANDS.name, "CS1", station_max_cmd("CS1", 8.0, "fb2").SerializeToString())
        await gw.wait_for(lambda: len(results) == 2)
        assert results[1].outcome == Oc.COMMAND_OUTCOME_ACCEPTED
        await c.close()
    finally:
        await gw.service.stop()
        await gw.bus.stop()


async def test_check_bounds_a_flood_of_reports_and_ignores_strangers() -> None:
    gw = await start_gateway(call_timeout_s=2.0, profile_check_delay_s=3600)
    try:
        c = await booted(gw, "CS1", "ocpp2.0.1")
        report = dict(V201["ReportChargingProfiles"])
        # reports for a request nobody made: answered, ignored
        res = await c.call("ReportChargingProfiles", {**report, "requestId": 999})
        assert res[0] == 3
        sess = gw.service.sessions["CS1"]

        def flood(msg: list[Any]) -> dict[str, Any]:
            rid = msg[3]["requestId"]

            async def send_all() -> None:
                for i in range(200):  # tbc forever: the gateway stops collecting at its bound
                    await c.ws.send(
                        f'[2,"r{i}","ReportChargingProfiles",'
                        f'{{"requestId":{rid},"chargingLimitSource":"CSO","evseId":1,"tbc":true,'
                        f'"chargingProfile":{report["chargingProfile"]!r}}}]'.replace("'", '"')
                    )

            asyncio.get_running_loop().create_task(send_all())
            return {"status": "Accepted"}

        c.answers.update(report_answers([]))
        results = await collect_results(gw)
        await gw.bus.publish(COMMANDS.name, "CS1", station_max_cmd("CS1", 6.0).SerializeToString())
        await gw.wait_for(lambda: bool(results))
        c.answers["GetChargingProfiles"] = flood
        res2 = await gw.service.checker.check_now(sess)
        assert res2.complete  # collected up to the bound, then judged
        # the flood lists a TxDefault profile (a slot gridcharge does not use: not foreign), never our fallback
        assert [(m.kind, m.profile_id) for m in res2.mismatches] == [("missing", 1000)]
        await c.close()
    finally:
        await gw.service.stop()
        await gw.bus.stop()


def test_use_priority_charging_is_21_only_and_needs_a_transaction() -> None:
    import pytest
    from gridcharge.gateway.core.commands import InvalidCommand, to_request
    from gridcharge.gateway.core.profiles import Capabilities

    cmd = command_pb2.StationCommand(command_id="u", station_id="CS1")
    cmd.use_priority_charging.transaction_id = "tx-1"
    cmd.use_priority_charging.activate = True
    action, payload = to_request(cmd, Version.V21, Capabilities())
    assert (action, payload) == ("UsePriorityCharging", {"transactionId": "tx-1", "activate": True})
    assert validate(Version.V21, action, "req", payload) is None
    for version in (Version.V16, Version.V201):
        with pytest.raises(InvalidCommand, match="does not exist"):
            to_request(cmd, version, Capabilities())
    cmd.use_priority_charging.transaction_id = ""
    with pytest.raises(InvalidCommand, match="transaction id"):
        to_request(cmd, Version.V21, Capabilities())
