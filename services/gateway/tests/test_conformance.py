"""OCPP conformance over real WebSockets: every station message answered per schema, charging limits on
the bus, boot state per station (not per connection), SecurityError before acceptance whatever the
action, Pending boots, and idToken authorization."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from gridcharge.command.v1 import command_pb2
from gridcharge.gateway.core import schemas
from gridcharge.gateway.core.errors import Version
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.bus.base import Record
from gridcharge.shared.contracts import COMMANDS, EXTERNAL_LIMITS, decode
from gridcharge.shared.store.memory import MemoryStore

from . import samples
from .conftest import BOOT_16, BOOT_201, Gateway, booted, open_client, start_gateway
from .test_end_to_end import collect_results

Oc = command_pb2.CommandOutcome
V16, V201 = Version.V16, Version.V201

# every message OCPP lets a station send (1.6 core + security whitepaper; 2.0.1 part 2)
SPEC_STATION_16 = {
    "Authorize",
    "BootNotification",
    "DataTransfer",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StartTransaction",
    "StatusNotification",
    "StopTransaction",
    "LogStatusNotification",
    "SecurityEventNotification",
    "SignCertificate",
    "SignedFirmwareStatusNotification",
}
SPEC_STATION_201 = {
    "Authorize",
    "BootNotification",
    "ClearedChargingLimit",
    "DataTransfer",
    "FirmwareStatusNotification",
    "Get15118EVCertificate",
    "GetCertificateStatus",
    "Heartbeat",
    "LogStatusNotification",
    "MeterValues",
    "NotifyChargingLimit",
    "NotifyCustomerInformation",
    "NotifyDisplayMessages",
    "NotifyEVChargingNeeds",
    "NotifyEVChargingSchedule",
    "NotifyEvent",
    "NotifyMonitoringReport",
    "NotifyReport",
    "PublishFirmwareStatusNotification",
    "ReportChargingProfiles",
    "ReservationStatusUpdate",
    "SecurityEventNotification",
    "SignCertificate",
    "StatusNotification",
    "TransactionEvent",
}


async def stop(gw: Gateway) -> None:
    await gw.service.stop()
    await gw.bus.stop()


async def collect_limits(gw: Gateway) -> list[tuple[str, grid_pb2.ExternalLimit]]:
    out: list[tuple[str, grid_pb2.ExternalLimit]] = []

    async def on_limit(rec: Record) -> None:
        out.append((rec.key, decode(grid_pb2.ExternalLimit, rec.value)))

    await gw.bus.subscribe([EXTERNAL_LIMITS.name], "test-limits", on_limit)
    return out


# ---- 1. every station message gets a spec-valid answer -----------------------------------------------


def test_samples_cover_every_station_message() -> None:
    assert samples.STATION_ACTIONS_16 == SPEC_STATION_16
    assert samples.STATION_ACTIONS_201 == SPEC_STATION_201


@pytest.mark.parametrize(("station", "protocol"), [("CP1", "ocpp1.6"), ("CS1", "ocpp2.0.1")])
async def test_every_station_message_answered_per_schema(gateway: Gateway, station: str, protocol: str) -> None:
    version = V16 if protocol == "ocpp1.6" else V201
    seeds = samples.V16 if version is V16 else samples.V201
    c = await booted(gateway, station, protocol)
    answers = {}
    for action, payload in seeds.items():
        assert schemas.validate(version, action, "req", payload) is None, action
        res = await c.call(action, payload)
        assert res[0] == 3, (action, res)
        assert schemas.validate(version, action, "conf", res[2]) is None, (action, res[2])
        answers[action] = res[2]
    if version is V201:
        assert answers["NotifyEvent"] == {}  # N07/N08: an empty NotifyEventResponse
        assert answers["Get15118EVCertificate"]["status"] == "Failed"
        assert answers["GetCertificateStatus"]["status"] == "Failed"
    assert answers["SignCertificate"]["status"] == "Rejected"  # no CA is configured
    assert answers["DataTransfer"]["status"] == "UnknownVendorId"
    await gateway.wait_for(lambda: "notification" in gateway.kinds(station))
    notified = {
        e.notification.action
        for e in gateway.events
        if e.station_id == station and e.WhichOneof("payload") == "notification"
    }
    assert "SecurityEventNotification" in notified and "FirmwareStatusNotification" in notified
    if version is V201:
        assert {"NotifyEvent", "NotifyReport"} <= notified
        report = next(e for e in gateway.events if e.WhichOneof("payload") == "charging_profiles_report")
        assert (
            json.loads(report.charging_profiles_report.profiles_json)[0]["chargingProfilePurpose"] == "TxDefaultProfile"
        )
    await c.close()


async def test_charging_limit_reaches_the_bus_as_a_station_scoped_external_limit(gateway: Gateway) -> None:
    limits = await collect_limits(gateway)
    c = await booted(gateway, "CS1", "ocpp2.0.1")
    notify = {
        "chargingLimit": {"chargingLimitSource": "SO", "isGridCritical": True},
        "evseId": 1,
        "chargingSchedule": [
            {
                "id": 1,
                "chargingRateUnit": "A",
                "startSchedule": "2026-06-01T10:00:00Z",
                "duration": 3600,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}, {"startPeriod": 1800, "limit": 10.0}],
            }
        ],
    }
    assert (await c.call("NotifyChargingLimit", notify))[2] == {}
    await gateway.wait_for(lambda: len(limits) == 1)
    key, lim = limits[0]
    assert lim.node_id == "site" and lim.station_id == "CS1" and lim.evse_id == 1
    assert lim.limit_id == "CS1/1/SO" and lim.source == "ocpp-so" and key == "site/CS1/1/SO"
    assert lim.limit_w.l1 == pytest.approx(16.0 * 230) and lim.limit_w.l3 == pytest.approx(16.0 * 230)
    assert lim.valid_from.ToJsonString() == "2026-06-01T10:00:00Z"
    assert lim.valid_to.ToJsonString() == "2026-06-01T11:00:00Z"
    assert [(s.start.ToJsonString(), s.limit_w.l2) for s in lim.schedule] == [("2026-06-01T10:30:00Z", 2300.0)]
    # a power limit is split over the station's phases (3 here)
    power = {
        "chargingLimit": {"chargingLimitSource": "EMS"},
        "chargingSchedule": [
            {"id": 2, "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11040.0}]}
        ],
    }
    await c.call("NotifyChargingLimit", power)
    await gateway.wait_for(lambda: len(limits) == 2)
    lim2 = limits[1][1]
    assert lim2.evse_id == 0 and lim2.limit_w.l1 == pytest.approx(3680.0) and not lim2.HasField("valid_to")
    # ClearedChargingLimit withdraws it: the same limit id with an empty window
    assert (await c.call("ClearedChargingLimit", {"chargingLimitSource": "SO", "evseId": 1}))[0] == 3
    await gateway.wait_for(lambda: len(limits) == 3)
    cleared = limits[2][1]
    assert cleared.limit_id == "CS1/1/SO" and cleared.valid_to == cleared.valid_from
    await c.close()


# ---- 2. the boot is per station, kept in the registry ---------------------------------------------------


async def test_reconnect_without_reboot_keeps_the_accepted_boot(gateway: Gateway) -> None:
    c = await booted(gateway, "CP1")
    await c.close()
    c = await open_client(gateway, "CP1")  # no BootNotification: the station did not reboot
    res = await c.call("Heartbeat", {})
    assert res[0] == 3, res
    res = await c.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"})
    assert res[0] == 3, res
    await c.close()


async def test_boot_state_is_shared_by_replicas() -> None:
    a = await start_gateway(replica_id="gw-a", read_capabilities=False)
    b = await start_gateway(replica_id="gw-b", read_capabilities=False, bus=a.bus, store=a.store)
    try:
        c = await booted(a, "CS2", "ocpp2.0.1")
        await c.close()
        c = await open_client(b, "CS2", "ocpp2.0.1")  # reconnects to the other replica
        assert (await c.call("Heartbeat", {}))[0] == 3
        await c.close()
    finally:
        await b.service.stop()
        await stop(a)


async def test_expired_boot_state_asks_the_station_to_boot() -> None:
    gw = await start_gateway(boot_state_ttl_s=0.3, read_capabilities=False)
    try:
        c = await booted(gw, "CP2")
        await c.close()
        await asyncio.sleep(0.5)
        c = await open_client(gw, "CP2")
        c.answers["TriggerMessage"] = {"status": "Accepted"}
        assert (await c.call("Heartbeat", {}))[2] == "SecurityError"
        await gw.wait_for(lambda: any(m[2] == "TriggerMessage" for m in c.received_calls))
        trig = next(m for m in c.received_calls if m[2] == "TriggerMessage")
        assert trig[3] == {"requestedMessage": "BootNotification"}
        assert (await c.call("BootNotification", BOOT_16))[2]["status"] == "Accepted"
        assert (await c.call("Heartbeat", {}))[0] == 3
        await c.close()
    finally:
        await stop(gw)


# ---- 3. before acceptance: SecurityError first, whatever the action -------------------------------------


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_security_error_before_acceptance_for_any_action(protocol: str) -> None:
    gw = await start_gateway(unknown_stations="pending", read_capabilities=False)
    try:
        c = await open_client(gw, "NEWCOMER", protocol)
        for action, payload in (
            ("FooBar", {}),
            ("SetChargingProfile", {}),
            ("NotifyEvent", {}),
            ("Heartbeat", {"unexpected": 1}),
        ):
            res = await c.call(action, payload)
            assert res[2] == "SecurityError", (action, res)  # not booted at all
        boot = BOOT_16 if protocol == "ocpp1.6" else BOOT_201
        assert (await c.call("BootNotification", boot))[2]["status"] == "Pending"
        for action in ("FooBar", "SetChargingProfile", "NotifyEvent", "StatusNotification"):
            res = await c.call(action, {})
            assert res[2] == "SecurityError", (action, res)  # B02.FR.09
        await c.close()
    finally:
        await stop(gw)
    gw = await start_gateway(unknown_stations="rejected", read_capabilities=False)
    try:
        c = await open_client(gw, "NEWCOMER", protocol)
        boot = BOOT_16 if protocol == "ocpp1.6" else BOOT_201
        assert (await c.call("BootNotification", boot))[2]["status"] == "Rejected"
        for action in ("FooBar", "RemoteStartTransaction", "Heartbeat"):
            res = await c.call(action, {})
            assert res[2] == "SecurityError", (action, res)  # B03.FR.07
        await c.close()
    finally:
        await stop(gw)


# ---- 4. Pending boots ----------------------------------------------------------------------------------


async def test_listed_station_is_held_pending_then_accepted() -> None:
    gw = await start_gateway(
        pending_stations="CP3,CS1", pending_hold_s=0.6, pending_interval_s=30, read_capabilities=False
    )
    results = await collect_results(gw)
    try:
        c = await open_client(gw, "CP3")
        c.answers["TriggerMessage"] = {"status": "Accepted"}
        res = await c.call("BootNotification", BOOT_16)
        assert res[2]["status"] == "Pending" and res[2]["interval"] == 1  # the retry ends the hold
        assert (await c.call("Heartbeat", {}))[2] == "SecurityError"
        # while Pending the CSMS may read configuration and trigger messages (1.6 §4.2)
        get = command_pb2.StationCommand(command_id="g1", station_id="CP3")
        get.get_configuration.keys.append("HeartbeatInterval")
        trig = command_pb2.StationCommand(command_id="t1", station_id="CP3")
        trig.trigger_message.requested_message = "StatusNotification"
        for cmd in (get, trig):
            await gw.bus.publish(COMMANDS.name, "CP3", cmd.SerializeToString())
        await gw.wait_for(lambda: len(results) == 2)
        assert [r.outcome for r in results] == [Oc.COMMAND_OUTCOME_ACCEPTED] * 2
        # the triggered message is let through while Pending (B02.FR.09)
        res = await c.call("StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available"})
        assert res[0] == 3, res
        assert (await c.call("MeterValues", {"connectorId": 1, "meterValue": samples.MV_16}))[2] == "SecurityError"
        await asyncio.sleep(0.7)
        res = await c.call("BootNotification", BOOT_16)
        assert res[2]["status"] == "Accepted" and res[2]["interval"] == 300
        assert (await c.call("Heartbeat", {}))[0] == 3
        # the next boot (a reboot) is held again
        assert (await c.call("BootNotification", BOOT_16))[2]["status"] == "Pending"
        await c.close()

        # 2.0.1 while Pending: GetVariables (B02.FR.01) and the rest of our commands are sent
        c2 = await open_client(gw, "CS1", "ocpp2.0.1")
        c2.answers["GetVariables"] = {
            "getVariableResult": [
                {
                    "attributeStatus": "Accepted",
                    "attributeValue": "300",
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "HeartbeatInterval"},
                }
            ]
        }
        assert (await c2.call("BootNotification", BOOT_201))[2]["status"] == "Pending"
        c2.answers["Reset"] = {"status": "Accepted"}
        gv = command_pb2.StationCommand(command_id="v1", station_id="CS1")
        gv.get_variables.variables.add(component="OCPPCommCtrlr", variable="HeartbeatInterval")
        rst = command_pb2.StationCommand(command_id="p1", station_id="CS1")
        rst.reset.type = "Hard"
        for cmd in (gv, rst):
            await gw.bus.publish(COMMANDS.name, "CS1", cmd.SerializeToString())
        await gw.wait_for(lambda: len(results) == 4)
        by_id = {r.command_id: r for r in results}
        assert by_id["v1"].outcome == Oc.COMMAND_OUTCOME_ACCEPTED and by_id["p1"].outcome == Oc.COMMAND_OUTCOME_ACCEPTED
        assert [m[2] for m in c2.received_calls] == ["GetVariables", "Reset"]
        await c2.close()
    finally:
        await stop(gw)


async def test_rejected_station_gets_no_commands() -> None:
    gw = await start_gateway(unknown_stations="rejected", read_capabilities=False)
    results = await collect_results(gw)
    try:
        c = await open_client(gw, "STRANGER")
        assert (await c.call("BootNotification", BOOT_16))[2]["status"] == "Rejected"
        cmd = command_pb2.StationCommand(command_id="r1", station_id="STRANGER")
        cmd.get_configuration.SetInParent()
        await gw.bus.publish(COMMANDS.name, "STRANGER", cmd.SerializeToString())
        await gw.wait_for(lambda: len(results) == 1)
        assert results[0].outcome == Oc.COMMAND_OUTCOME_INVALID and "Rejected" in results[0].error_description
        assert c.received_calls == []
        await c.close()
    finally:
        await stop(gw)


class FlakyStore(MemoryStore):
    """The in-memory store with an off switch (Redis unreachable)."""

    down = False

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        if self.down:
            raise ConnectionError("store unreachable")
        await super().set(key, value, ttl_s)


async def test_boot_is_pending_while_the_cluster_is_not_ready() -> None:
    store = FlakyStore()
    gw = await start_gateway(store=store, pending_interval_s=7, cluster_timeout_s=0.5, read_capabilities=False)
    try:
        c = await open_client(gw, "CP4")
        store.down = True
        res = await c.call("BootNotification", BOOT_16)
        assert res[2]["status"] == "Pending" and res[2]["interval"] == 7
        store.down = False
        assert (await c.call("BootNotification", BOOT_16))[2]["status"] == "Accepted"

        class DeadBus:
            async def publish(self, topic: str, key: str, value: bytes) -> None:
                raise ConnectionError("broker unreachable")

        live_bus = gw.service.ctx.bus
        gw.service.ctx.bus = DeadBus()  # type: ignore[assignment]
        res = await c.call("BootNotification", BOOT_16)
        assert res[2]["status"] == "Pending"
        assert (await c.call("Heartbeat", {}))[2] == "SecurityError"
        gw.service.ctx.bus = live_bus
        assert (await c.call("BootNotification", BOOT_16))[2]["status"] == "Accepted"
        await c.close()
    finally:
        await stop(gw)


# ---- 5. authorization ------------------------------------------------------------------------------------


class FakeUpstream:
    """An upstream system (the `Upstream` protocol) that knows one token."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    async def authorize(self, req: Any) -> Any:
        from gridcharge.gateway.core.authorization import Decision

        self.asked.append(req)
        return Decision("Accepted") if req.id_token == "UPSTREAM-1" else None


async def test_transaction_event_answers_carry_id_token_info_in_accept_all_mode(gateway: Gateway) -> None:
    c = await booted(gateway, "CS2", "ocpp2.0.1")
    res = await c.call(
        "TransactionEvent", samples.V201["TransactionEvent"] | {"idToken": {"idToken": "ANY", "type": "ISO14443"}}
    )
    assert res[2] == {"idTokenInfo": {"status": "Accepted"}}  # E01.FR.12
    res = await c.call("TransactionEvent", samples.V201["TransactionEvent"] | {"seqNo": 1, "eventType": "Updated"})
    assert res[2] == {}  # no idToken, no idTokenInfo
    await c.close()


async def test_local_list_authorization(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "OK-1: Accepted\nBLOCKED-1: Blocked\n"
        "OLD-1: {status: Accepted, expiry: '2020-01-01T00:00:00Z'}\n"
        "FLEET-1: {status: Accepted, expiry: '2099-01-01T00:00:00Z', group: FLEET}\n"
    )
    upstream = FakeUpstream()
    gw = await start_gateway(
        authorization="local-list", id_tokens_file=tokens, read_capabilities=False, upstream=upstream
    )
    try:
        # the store's list wins over the file and is shared by every replica
        await gw.store.hset("gw:id-tokens", "OK-1", json.dumps({"status": "Blocked"}).encode())
        await gw.store.hset("gw:id-tokens", "STORE-1", json.dumps({"status": "Accepted"}).encode())
        c = await booted(gw, "CP5")

        async def status16(tag: str) -> dict[str, Any]:
            res = await c.call("Authorize", {"idTag": tag})
            assert schemas.validate(V16, "Authorize", "conf", res[2]) is None
            info: dict[str, Any] = res[2]["idTagInfo"]
            return info

        assert (await status16("OK-1"))["status"] == "Blocked"
        assert (await status16("STORE-1"))["status"] == "Accepted"
        assert (await status16("BLOCKED-1"))["status"] == "Blocked"
        assert (await status16("OLD-1"))["status"] == "Expired"
        assert await status16("FLEET-1") == {
            "status": "Accepted",
            "expiryDate": "2099-01-01T00:00:00Z",
            "parentIdTag": "FLEET",
        }
        assert (await status16("NOBODY"))["status"] == "Invalid"
        assert (await status16("UPSTREAM-1"))["status"] == "Accepted"  # pass-through
        assert [r.id_token for r in upstream.asked] == ["NOBODY", "UPSTREAM-1"]
        res = await c.call(
            "StartTransaction", {"connectorId": 1, "idTag": "BLOCKED-1", "meterStart": 0, "timestamp": samples.TS}
        )
        assert res[2]["idTagInfo"] == {"status": "Blocked"} and isinstance(res[2]["transactionId"], int)
        res = await c.call(
            "StopTransaction",
            {"transactionId": res[2]["transactionId"], "meterStop": 10, "timestamp": samples.TS, "idTag": "NOBODY"},
        )
        assert res[2] == {"idTagInfo": {"status": "Invalid"}}
        await gw.wait_for(lambda: "authorize" in gw.kinds("CP5"))
        assert [e.authorize.status for e in gw.events if e.WhichOneof("payload") == "authorize"][:2] == [
            "Blocked",
            "Accepted",
        ]
        await c.close()

        c2 = await booted(gw, "CS1", "ocpp2.0.1")
        res = await c2.call("Authorize", {"idToken": {"idToken": "FLEET-1", "type": "ISO14443"}})
        assert res[2]["idTokenInfo"] == {
            "status": "Accepted",
            "cacheExpiryDateTime": "2099-01-01T00:00:00Z",
            "groupIdToken": {"idToken": "FLEET", "type": "Central"},
        }
        assert schemas.validate(V201, "Authorize", "conf", res[2]) is None
        tx = samples.V201["TransactionEvent"] | {"idToken": {"idToken": "BLOCKED-1", "type": "ISO14443"}}
        res = await c2.call("TransactionEvent", tx)
        assert res[2] == {"idTokenInfo": {"status": "Blocked"}}  # E01.FR.11/12
        res = await c2.call("TransactionEvent", tx)  # a retransmission: same answer
        assert res[2] == {"idTokenInfo": {"status": "Blocked"}}
        res = await c2.call("Authorize", {"idToken": {"idToken": "", "type": "NoAuthorization"}})
        assert res[2]["idTokenInfo"]["status"] == "Accepted"
        await c2.close()
    finally:
        await stop(gw)
