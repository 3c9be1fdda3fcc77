"""Proxy mode rules (`core.proxy`), pure: what is queued, which answer the station gets, 1.6 transaction
ids, the profile policy (reserved stack levels and ids, narrowed Clears), the bounded offline queue and its
stored form, the client-certificate rule of security profile 3."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
    cert_expires_soon,
    client_cert_problem,
    decode_queued,
    encode_queued,
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


def test_offline_queue_reports_what_it_evicted() -> None:
    q = OfflineQueue(max_items=2)
    meter = Queued("MeterValues", {"transactionId": 1}, seq=2)
    assert q.push(Queued("StartTransaction", {}, seq=1)).evicted is None
    q.push(meter)
    res = q.push(Queued("StopTransaction", {}, seq=3))
    assert res.queued and res.evicted is meter  # the store entry 2 goes too
    refused = q.push(Queued("StopTransaction", {}, seq=4))
    assert not refused and refused.evicted is None


def test_offline_queue_restores_stored_entries_in_their_order_under_the_bound() -> None:
    q = OfflineQueue(max_items=3)
    stored = [
        Queued("StopTransaction", {}, seq=30),
        Queued("StartTransaction", {}, seq=4),
        Queued("MeterValues", {"transactionId": 1}, seq=12),
        Queued("MeterValues", {"transactionId": 1}, seq=20),
    ]
    gone = q.restore(stored)
    assert [i.seq for i in q.items] == [4, 20, 30]  # ordered by seq; at the bound the oldest meter gave way
    assert [g.seq for g in gone] == [12]


def test_two_equal_entries_are_two_entries() -> None:
    q = OfflineQueue()
    a, b = Queued("MeterValues", {"transactionId": 1}), Queued("MeterValues", {"transactionId": 1})
    q.push(a)
    q.push(b)
    q.items.remove(b)
    assert q.items[0] is a


def test_queued_entries_round_trip_through_the_store_and_foreign_ones_are_refused() -> None:
    item = Queued("StartTransaction", {"connectorId": 1, "idTag": "Ä"}, local_tx_id=17)
    back = decode_queued(5, encode_queued(item), 4096)
    assert back is not None and (back.action, back.payload, back.local_tx_id, back.seq) == (
        "StartTransaction",
        {"connectorId": 1, "idTag": "Ä"},
        17,
        5,
    )
    for raw in (
        b"not json",
        b"[1,2]",
        b'{"a":"Reset","p":{}}',  # not a transaction message
        b'{"a":"MeterValues","p":[]}',
        b'{"a":"StartTransaction","p":{},"t":"17"}',
        b'{"a":"StartTransaction","p":{},"t":true}',
        b'{"a":"MeterValues","p":{"x":"' + b"y" * 5000 + b'"}}',  # over the size bound
        b"\xff\xfe",
    ):
        assert decode_queued(1, raw, 4096) is None, raw


def test_tx_id_map_reports_the_id_it_forgets() -> None:
    m = TxIdMap(max_entries=2)
    assert m.add(1, 7001) is None and m.add(2, 7002) is None
    assert m.add(2, 7003) is None  # an update, nothing forgotten
    assert m.add(3, 7004) == 1 and set(m.to_upstream_ids) == {2, 3}


NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cns", "before", "after", "problem"),
    [
        (["CP1"], NOW - timedelta(days=1), NOW + timedelta(days=1), None),
        (["CP2"], NOW - timedelta(days=1), NOW + timedelta(days=1), "CN is CP2, not the station id CP1"),
        ([], NOW - timedelta(days=1), NOW + timedelta(days=1), "CN is none"),
        (["CP1", "CP2"], NOW - timedelta(days=1), NOW + timedelta(days=1), "CN is CP1, CP2"),
        (["cp1"], NOW - timedelta(days=1), NOW + timedelta(days=1), "not the station id"),  # ids are exact
        (["CP1"], NOW + timedelta(hours=1), NOW + timedelta(days=1), "not valid before"),
        (["CP1"], NOW - timedelta(days=2), NOW - timedelta(seconds=1), "expired at"),
        (["CP1"], NOW - timedelta(days=2), NOW, "expired at"),
    ],
)
def test_client_certificate_rule(cns: list[str], before: datetime, after: datetime, problem: str | None) -> None:
    got = client_cert_problem("CP1", cns, before, after, NOW)
    assert (got is None) if problem is None else (got is not None and problem in got)


def test_client_certificate_expiry_warning_window() -> None:
    assert cert_expires_soon(NOW + timedelta(days=3), NOW)
    assert not cert_expires_soon(NOW + timedelta(days=30), NOW)
    assert not cert_expires_soon(NOW - timedelta(days=1), NOW)  # already expired: an error, not a warning
