"""Pure core rules added for conformance and hardening: registration, authorization, station limits,
rate buckets, auth back-off, timestamp range."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from gridcharge.gateway.core import schemas
from gridcharge.gateway.core.authorization import (
    STATUSES_201,
    Decision,
    TokenEntry,
    decide,
    id_tag_info_16,
    id_token_info_201,
)
from gridcharge.gateway.core.boot import (
    PendingReason,
    Registration,
    command_allowed,
    decide_boot,
    station_call_allowed,
    triggered_action,
)
from gridcharge.gateway.core.errors import Err, Version
from gridcharge.gateway.core.limits import StationFacts, cleared_limits, limit_id, station_limit
from gridcharge.gateway.core.lockout import AuthBackoff, Policy
from gridcharge.gateway.core.mapping import parse_time
from gridcharge.gateway.core.ratelimit import BucketTable, TokenBucket, allow_all
from gridcharge.shared.codec import to_timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

V16, V201 = Version.V16, Version.V201
NOW = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
R = Registration


# ---- registration ------------------------------------------------------------------------------------


def test_before_acceptance_only_boot_and_triggered_messages_pass() -> None:
    for status in (R.NONE, R.PENDING, R.REJECTED):
        assert station_call_allowed(status, "BootNotification", set())
        for action in ("Heartbeat", "FooBar", "SetChargingProfile", "NotifyEvent"):
            assert not station_call_allowed(status, action, set()), (status, action)
    assert station_call_allowed(R.PENDING, "StatusNotification", {"StatusNotification"})
    assert not station_call_allowed(R.REJECTED, "StatusNotification", {"StatusNotification"})
    assert station_call_allowed(R.ACCEPTED, "FooBar", set())  # then the action check answers it


def test_commands_per_registration() -> None:
    assert command_allowed(R.ACCEPTED, V201, "SetChargingProfile")
    assert not command_allowed(R.REJECTED, V16, "GetConfiguration") and not command_allowed(R.NONE, V16, "Reset")
    assert command_allowed(R.PENDING, V16, "SetChargingProfile")  # 1.6: all but remote start/stop
    assert not command_allowed(R.PENDING, V16, "RemoteStartTransaction")
    assert command_allowed(R.PENDING, V201, "GetVariables") and command_allowed(R.PENDING, V201, "TriggerMessage")
    assert command_allowed(R.PENDING, V201, "SetChargingProfile")  # the fallback before acceptance
    assert not command_allowed(R.PENDING, V201, "RequestStartTransaction")  # B02.FR.05


def test_triggered_actions() -> None:
    assert triggered_action(V201, "TriggerMessage", {"requestedMessage": "SignV2GCertificate"}) == "SignCertificate"
    assert triggered_action(V16, "TriggerMessage", {"requestedMessage": "MeterValues"}) == "MeterValues"
    assert triggered_action(V201, "GetBaseReport", {}) == "NotifyReport"
    assert triggered_action(V16, "GetConfiguration", {}) is None


def test_boot_decisions() -> None:
    kw: dict[str, Any] = {"now": 100.0, "hold_s": 60.0, "heartbeat_interval_s": 300, "pending_interval_s": 30}
    d = decide_boot(known=True, unknown_policy="reject", provisioning=False, pending_since=None, **kw)
    assert (d.status, d.interval_s) == (R.ACCEPTED, 300)
    d = decide_boot(known=False, unknown_policy="pending", provisioning=False, pending_since=None, **kw)
    assert (d.status, d.reason) == (R.PENDING, PendingReason.UNKNOWN_STATION)
    d = decide_boot(known=False, unknown_policy="rejected", provisioning=False, pending_since=None, **kw)
    assert d.status is R.REJECTED
    d = decide_boot(known=True, unknown_policy="reject", provisioning=True, pending_since=None, **kw)
    assert (d.status, d.reason, d.interval_s) == (R.PENDING, PendingReason.PROVISIONING, 30)
    d = decide_boot(known=True, unknown_policy="reject", provisioning=True, pending_since=50.0, **kw)
    assert (d.status, d.interval_s) == (R.PENDING, 10)  # the retry lands when the hold ends
    d = decide_boot(known=True, unknown_policy="reject", provisioning=True, pending_since=40.0, **kw)
    assert d.status is R.ACCEPTED


# ---- authorization -----------------------------------------------------------------------------------------


def test_token_entries_and_decisions() -> None:
    assert TokenEntry.parse("Blocked") == TokenEntry("Blocked")
    e = TokenEntry.parse({"status": "Accepted", "expiry": "2026-06-01T12:00:00+02:00", "group": "G"})
    assert e.expiry == datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    assert decide(e, NOW).status == "Expired"  # expiry reached
    assert decide(e, datetime(2026, 6, 1, 9, 0, tzinfo=UTC)) == Decision("Accepted", e.expiry, "G")
    assert decide(None, NOW).status == "Invalid"
    for bad in (
        {"status": "Maybe"},
        {"status": "Accepted", "expiry": "2026-06-01T00:00:00"},
        {"x": 1},
        5,
        {"group": "g" * 37},
    ):
        with pytest.raises(ValueError):
            TokenEntry.parse(bad)


@pytest.mark.parametrize("status", sorted(STATUSES_201))
def test_answers_are_schema_valid(status: str) -> None:
    d = Decision(status, NOW, "GROUP-" + "x" * 40)
    ans16 = {"idTagInfo": id_tag_info_16(d)}
    assert schemas.validate(V16, "Authorize", "conf", ans16) is None
    assert schemas.validate(V16, "StartTransaction", "conf", {"transactionId": 1, **ans16}) is None
    ans201 = {"idTokenInfo": id_token_info_201(d)}
    assert schemas.validate(V201, "Authorize", "conf", ans201) is None
    assert schemas.validate(V201, "TransactionEvent", "conf", ans201) is None


# ---- station limits ------------------------------------------------------------------------------------------

FACTS = StationFacts("CS1", "panel-1", 1, 230.0)


def test_station_limit_from_several_schedules_is_their_minimum() -> None:
    p = {
        "chargingLimit": {"chargingLimitSource": "EMS"},
        "chargingSchedule": [
            {
                "id": 1,
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7000}, {"startPeriod": 600, "limit": 2000}],
            },
            {
                "id": 2,
                "chargingRateUnit": "A",
                "startSchedule": "2026-06-01T10:05:00Z",
                "duration": 600,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 20}],
            },
        ],
    }
    lim = station_limit(FACTS, p, NOW, "gw")
    assert lim is not None and lim.station_id == "CS1" and lim.evse_id == 0 and lim.node_id == "panel-1"
    assert lim.limit_w.l1 == 7000.0  # one phase: all of it
    steps = [(s.start.ToJsonString(), s.limit_w.l1) for s in lim.schedule]
    assert steps == [("2026-06-01T10:05:00Z", 4600.0), ("2026-06-01T10:10:00Z", 2000.0)]
    assert not lim.HasField("valid_to")
    assert station_limit(FACTS, {"chargingLimit": {"chargingLimitSource": "EMS"}}, NOW, "gw") is None
    huge = {
        "chargingLimit": {"chargingLimitSource": "SO"},
        "chargingSchedule": [
            {"id": 1, "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": float("inf")}]}
        ],
    }
    lim = station_limit(FACTS, huge, NOW, "gw")
    assert lim is not None and lim.limit_w.l1 == 1e9


def test_limit_ids_fit_the_allocator_and_cleared_limits_cover_every_evse() -> None:
    assert len(limit_id("S" * 48, 12345, "Other")) <= 64
    assert limit_id("S" * 48, 1, "SO") != limit_id("S" * 47 + "T", 1, "SO")
    out = cleared_limits(FACTS, {"chargingLimitSource": "EMS"}, [1, 2], NOW, "gw")
    assert [m.evse_id for m in out] == [0, 1, 2] and all(m.valid_to == m.valid_from for m in out)


# ---- rate buckets and auth back-off -----------------------------------------------------------------------


def test_bucket_table_keeps_buckets_until_they_refill() -> None:
    t: BucketTable[str] = BucketTable(rate=1.0, burst=2, sweep_above=2)
    assert t.get("a", 0.0).allow(0.0) and t.get("a", 0.0).allow(0.0) and not t.get("a", 0.0).allow(0.0)
    t.get("b", 0.0)
    t.get("c", 0.5)  # sweep: "a" is not full yet, "b" is (never used)
    assert not t.get("a", 0.5).allow(0.5) and len(t) == 2
    t.sweep(10.0)
    assert len(t) == 0


def test_allow_all_takes_from_every_bucket_or_none() -> None:
    a, b = TokenBucket(1.0, 1, 0.0), TokenBucket(1.0, 1, 0.0)
    b.tokens = 0.0
    assert not allow_all([a, b], 0.0) and a.tokens == 1.0
    assert allow_all([a, b], 1.0) and a.tokens == 0.0 and b.tokens == 0.0


def test_auth_backoff_doubles_then_locks() -> None:
    b = AuthBackoff(Policy(base_delay_s=1.0, max_delay_s=4.0, lockout_after=4, lockout_s=100.0))
    assert b.wait_s("k", 0.0) == 0.0
    assert not b.failure("k", 0.0) and b.wait_s("k", 0.0) == 1.0
    assert not b.failure("k", 1.0) and b.wait_s("k", 1.0) == 2.0
    assert not b.failure("k", 3.0) and b.wait_s("k", 3.0) == 4.0
    assert b.failure("k", 7.0) and b.locked("k", 7.0) and b.wait_s("k", 7.0) == 100.0
    assert b.wait_s("k", 107.0) == 0.0 and b.wait_s("other", 7.0) == 0.0
    b.success("k")
    assert b.wait_s("k", 7.0) == 0.0


# ---- timestamps ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "bad"),
    [
        ("0001-01-01T00:00:00+14:00", True),
        ("9999-12-31T23:59:59-14:00", True),
        ("0001-01-01T14:00:00+14:00", False),
        ("9999-12-31T23:59:59Z", False),
        ("garbage", False),
        ("2026-06-01T10:00:00", False),
    ],
)
def test_out_of_range_date_times_are_property_violations(ts: str, bad: bool) -> None:
    v = schemas.validate(
        V16,
        "StatusNotification",
        "req",
        {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": ts},
    )
    assert (v is not None and v.kind is Err.PROPERTY and "/timestamp" in v.description) == bad
    v = schemas.validate(
        V201,
        "MeterValues",
        "req",
        {
            "evseId": 1,
            "meterValue": [
                {"timestamp": "2026-06-01T10:00:00Z", "sampledValue": [{"value": 1}]},
                {"timestamp": ts, "sampledValue": [{"value": 1}]},
            ],
        },
    )
    assert (v is not None and "/meterValue/1/timestamp" in v.description) == bad


@settings(max_examples=200, deadline=None)
@given(year=st.integers(1, 9999), hours=st.integers(-14, 14), minutes=st.sampled_from([0, 30, 59]))
def test_any_valid_timestamp_maps_without_error(year: int, hours: int, minutes: int) -> None:
    sign = "-" if hours < 0 else "+"
    ts = f"{year:04d}-12-31T23:59:59{sign}{abs(hours):02d}:{minutes:02d}"
    p = {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": ts}
    if schemas.validate(V16, "StatusNotification", "req", p) is None:
        dt = parse_time(ts)
        assert dt is not None
        to_timestamp(dt)  # the protobuf mapping accepts what validation let through
    else:
        assert parse_time(ts) is None
    json.dumps(p)
