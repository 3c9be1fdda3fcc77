"""Proxy mode rules (`core.proxy`), pure: what is queued, which answer the station gets, 1.6 transaction
ids, the profile policy (reserved stack levels and ids, narrowed Clears), the bounded offline queue."""

from __future__ import annotations

from typing import Any

import pytest
from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.core.proxy import (
    OfflineQueue,
    ProfilePolicy,
    ProfileRecord,
    ProfileRef,
    Queued,
    TxIdMap,
    is_transaction_message,
    ref_of,
    refused_answer,
    station_answer,
)

V16, V201 = Version.V16, Version.V201
POLICY = ProfilePolicy(frozenset({0, 1}), range(1000, 4000))


def set16(pid: int, purpose: str, stack: int, connector: int = 1) -> dict[str, Any]:
    return {
        "connectorId": connector,
        "csChargingProfiles": {
            "chargingProfileId": pid,
            "stackLevel": stack,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}]},
        },
    }


def set201(pid: int, purpose: str, stack: int, evse: int = 1) -> dict[str, Any]:
    return {
        "evseId": evse,
        "chargingProfile": {
            "id": pid,
            "stackLevel": stack,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Relative",
            "chargingSchedule": [
                {"id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}]}
            ],
        },
    }


@pytest.mark.parametrize(
    ("version", "action", "payload", "tx"),
    [
        (V16, "StartTransaction", {}, True),
        (V16, "StopTransaction", {}, True),
        (V16, "MeterValues", {"transactionId": 5}, True),
        (V16, "MeterValues", {"connectorId": 1}, False),  # no transaction: not queued
        (V16, "StatusNotification", {}, False),
        (V16, "Authorize", {}, False),
        (V201, "TransactionEvent", {}, True),
        (V201, "MeterValues", {}, False),
        (V201, "BootNotification", {}, False),
    ],
)
def test_transaction_messages(version: Version, action: str, payload: dict[str, Any], tx: bool) -> None:
    assert is_transaction_message(version, action, payload) is tx


def test_station_gets_the_upstreams_answer_except_a_boot_gridcharge_does_not_accept() -> None:
    up = {"status": "Accepted", "interval": 77, "currentTime": "2030-01-01T00:00:00Z"}
    assert station_answer("BootNotification", {"status": "Accepted", "interval": 300}, up) is up
    local = {"status": "Pending", "interval": 30}
    assert station_answer("BootNotification", local, up) is local
    assert station_answer("BootNotification", {"status": "Accepted"}, {"status": "Rejected"})["status"] == "Rejected"
    auth = {"idTagInfo": {"status": "Invalid"}}
    assert station_answer("Authorize", {"idTagInfo": {"status": "Accepted"}}, auth) is auth


def test_tx_ids_both_ways() -> None:
    m = TxIdMap()
    m.add(12, 7001)
    assert m.for_upstream("StopTransaction", {"transactionId": 12, "meterStop": 5})["transactionId"] == 7001
    assert m.for_upstream("MeterValues", {"transactionId": 12})["transactionId"] == 7001
    assert m.for_upstream("StopTransaction", {"transactionId": 13}) == {"transactionId": 13}  # online id
    assert m.for_station("RemoteStopTransaction", {"transactionId": 7001}) == {"transactionId": 12}
    prof = m.for_station("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {"transactionId": 7001}})
    assert prof["csChargingProfiles"]["transactionId"] == 12
    bounded = TxIdMap(max_entries=2)
    for i in range(5):
        bounded.add(i, 100 + i)
    assert len(bounded.to_upstream_ids) == 2


@pytest.mark.parametrize(
    ("version", "payload", "refused"),
    [
        (V16, set16(1, "TxDefaultProfile", 0), False),  # the usual CSMS default: passes unchanged
        (V16, set16(1, "TxDefaultProfile", 1), False),  # gridcharge writes no TxDefault
        (V16, set16(2, "TxProfile", 2), False),
        (V16, set16(2, "TxProfile", 1), True),  # gridcharge's per-EVSE split
        (V16, set16(3, "ChargePointMaxProfile", 0, 0), True),  # gridcharge's fallback
        (V16, set16(3, "ChargePointMaxProfile", 1, 0), True),  # gridcharge's lease
        (V16, set16(3, "ChargePointMaxProfile", 5, 0), True),  # would override gridcharge's cap
        (V16, set16(1001, "TxDefaultProfile", 3), True),  # would replace gridcharge's lease by id
        (V201, set201(1, "TxDefaultProfile", 0), False),
        (V201, set201(2, "TxProfile", 1), True),
        (V201, set201(3, "ChargingStationMaxProfile", 2, 0), True),
        (V201, set201(3011, "TxProfile", 4), True),
    ],
)
def test_profile_refusal(version: Version, payload: dict[str, Any], refused: bool) -> None:
    assert (POLICY.refusal(version, payload) is not None) is refused


def test_station_max_below_gridcharges_levels_passes_when_configured_so() -> None:
    policy = ProfilePolicy(frozenset({2, 3}), range(1000, 4000))
    assert policy.refusal(V16, set16(3, "ChargePointMaxProfile", 1, 0)) is None
    assert policy.refusal(V16, set16(3, "ChargePointMaxProfile", 4, 0)) is not None


RECORDED = [
    ProfileRef(1, 1, "TxDefaultProfile", 0),
    ProfileRef(2, 1, "TxProfile", 2),
    ProfileRef(3, 2, "TxDefaultProfile", 0),
]


@pytest.mark.parametrize(
    ("version", "payload", "relay", "ids", "refuse"),
    [
        (V16, {"id": 1}, True, (), False),  # the upstream's own id
        (V16, {"id": 1001}, False, (), True),  # gridcharge's lease
        (V16, {}, False, (1, 2, 3), False),  # clear-all → the upstream's
        (V16, {"connectorId": 1}, False, (1, 2), False),
        (V16, {"chargingProfilePurpose": "TxDefaultProfile"}, True, (), False),  # cannot touch gridcharge's
        (V16, {"chargingProfilePurpose": "TxProfile"}, False, (2,), False),
        (V16, {"chargingProfilePurpose": "TxProfile", "stackLevel": 2}, True, (), False),
        (V16, {"chargingProfilePurpose": "ChargePointMaxProfile"}, False, (), False),  # nothing of the upstream's
        (V201, {"chargingProfileId": 3}, True, (), False),
        (V201, {"chargingProfileId": 1000}, False, (), True),
        (V201, {"chargingProfileCriteria": {"evseId": 2}}, False, (3,), False),
        (
            V201,
            {"chargingProfileCriteria": {"chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 0}},
            True,
            (),
            False,
        ),
    ],
)
def test_clear_plan(version: Version, payload: dict[str, Any], relay: bool, ids: tuple[int, ...], refuse: bool) -> None:
    plan = POLICY.plan_clear(version, payload, RECORDED)
    assert (plan.relay, plan.ids, bool(plan.refuse)) == (relay, ids, refuse)


def test_refused_answers_fit_each_version() -> None:
    assert refused_answer(V16, "SetChargingProfile", "x") == {"status": "Rejected"}
    assert refused_answer(V16, "ClearChargingProfile", "x") == {"status": "Unknown"}
    a = refused_answer(V201, "SetChargingProfile", "y" * 2000)
    assert a["status"] == "Rejected" and len(a["statusInfo"]["reasonCode"]) <= 20
    assert len(a["statusInfo"]["additionalInfo"]) <= 512


def test_profile_record_replaces_same_slot_and_is_bounded() -> None:
    rec = ProfileRecord(max_entries=3)
    rec.installed(ref_of(V16, set16(1, "TxDefaultProfile", 0)))
    rec.installed(ref_of(V16, set16(2, "TxDefaultProfile", 0)))  # same connector/purpose/stack: replaces 1
    assert set(rec.profiles) == {2}
    for pid in range(10, 20):
        rec.installed(ref_of(V16, set16(pid, "TxDefaultProfile", pid)))
    assert len(rec.profiles) == 3
    rec.cleared([19, 999])
    assert 19 not in rec.profiles


def test_offline_queue_keeps_starts_and_stops_and_drops_meter_data_first() -> None:
    q = OfflineQueue(max_items=3)
    assert q.push(Queued("StartTransaction", {}))
    assert q.push(Queued("MeterValues", {"transactionId": 1}))
    assert q.push(Queued("MeterValues", {"transactionId": 1, "n": 2}))
    assert q.push(Queued("StopTransaction", {}))  # the oldest meter value goes
    assert [i.action for i in q.items] == ["StartTransaction", "MeterValues", "StopTransaction"]
    assert q.items[1].payload.get("n") == 2 and q.dropped == 1
    assert q.push(Queued("StartTransaction", {}))  # the other meter value goes
    assert not q.push(Queued("StopTransaction", {}))  # nothing droppable: the new one is
    assert len(q) == 3 and q.dropped == 3
    q201 = OfflineQueue(max_items=2)
    q201.push(Queued("TransactionEvent", {"eventType": "Started"}))
    q201.push(Queued("TransactionEvent", {"eventType": "Updated"}))
    q201.push(Queued("TransactionEvent", {"eventType": "Ended"}))
    assert [i.payload["eventType"] for i in q201.items] == ["Started", "Ended"]
