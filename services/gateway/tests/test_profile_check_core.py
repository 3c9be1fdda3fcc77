"""The profile check's pure logic: what gridcharge sent and the station accepted against what it reports, and
the check cadence; and NotifyChargingLimit's OCPP 2.1 variants as external limits."""

from __future__ import annotations

from datetime import UTC, datetime

from gridcharge.gateway.core import limits
from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.core.profile_check import (
    CheckSchedule,
    ProfileBook,
    compare_composite,
    compare_profiles,
    composite_now,
    reported_profiles,
    sent_profile,
)
from gridcharge.shared.codec import phase_tuple

T0 = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)
NOW = T0.timestamp()


def scp201(
    pid: int,
    stack: int,
    limit: float,
    *,
    purpose: str = "ChargingStationMaxProfile",
    evse: int = 0,
    valid_to: str | None = None,
    tx: str | None = None,
    unit: str = "A",
) -> dict:
    prof: dict = {
        "id": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute",
        "chargingSchedule": [
            {
                "id": pid,
                "chargingRateUnit": unit,
                "startSchedule": "2026-06-03T11:59:00Z",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
            }
        ],
    }
    if valid_to:
        prof["validTo"] = valid_to
    if tx:
        prof["transactionId"] = tx
    return {"evseId": evse, "chargingProfile": prof}


def book_with(*payloads: dict) -> ProfileBook:
    book = ProfileBook()
    for p in payloads:
        sp = sent_profile(Version.V201, p, NOW)
        assert sp is not None
        book.accepted(sp)
    return book


def report(evse: int, *profiles: dict, source: str = "CSO") -> dict:
    return {
        "requestId": 1,
        "chargingLimitSource": source,
        "evseId": evse,
        "chargingProfile": [p["chargingProfile"] for p in profiles],
    }


FALLBACK = scp201(1000, 0, 6.0)
LEASE = scp201(1001, 1, 16.0, valid_to="2026-06-03T12:20:00Z")


def test_a_station_holding_what_it_accepted_passes() -> None:
    book = book_with(FALLBACK, LEASE)
    rep = reported_profiles([report(0, FALLBACK, LEASE)])
    assert compare_profiles(book, rep, NOW, 30.0) == []


def test_missing_higher_and_foreign_profiles_are_found() -> None:
    book = book_with(FALLBACK, LEASE)
    raised = scp201(1001, 1, 32.0, valid_to="2026-06-03T12:20:00Z")  # our lease, but at 32 A
    intruder = scp201(77, 0, 40.0)  # someone else's at our stack 0
    kinds = {m.kind for m in compare_profiles(book, reported_profiles([report(0, raised, intruder)]), NOW, 30.0)}
    assert kinds == {"missing", "higher_limit", "foreign"}  # the fallback 1000 is gone
    # a profile from another source (an EMS) is an external limit, not ours to compare
    assert (
        compare_profiles(
            book, reported_profiles([report(0, FALLBACK, LEASE), report(0, intruder, source="EMS")]), NOW, 30.0
        )
        == []
    )


def test_expired_and_cleared_profiles_and_ended_transactions_are_not_expected() -> None:
    tx = scp201(3011, 1, 10.0, purpose="TxProfile", evse=1, tx="T1")
    book = book_with(FALLBACK, LEASE, tx)
    later = datetime(2026, 6, 3, 12, 19, 50, tzinfo=UTC).timestamp()  # the lease ends within the clock skew
    assert {m.profile_id for m in compare_profiles(book, [], later, 30.0)} == {1000, 3011}
    book.transaction_ended("T1")
    book.cleared(Version.V201, {"chargingProfileId": 1000})
    assert compare_profiles(book, [], later, 30.0) == []


def test_book_survives_the_store_and_a_bad_blob_is_an_empty_book() -> None:
    book = book_with(FALLBACK, LEASE)
    again = ProfileBook.load(book.dump())
    assert again.profiles == book.profiles and again.known_ids == book.known_ids
    assert ProfileBook.load(b'{"profiles": [{"evse_id": "x"}]}').profiles == {}
    assert ProfileBook.load(b"\xff garbage").profiles == {}


def test_composite_above_what_we_allow_is_a_mismatch() -> None:
    book = book_with(FALLBACK, LEASE)  # the lease (stack 1) wins over the fallback: 16 A now
    ok = composite_now(
        Version.V201,
        {
            "status": "Accepted",
            "schedule": {
                "evseId": 0,
                "duration": 300,
                "scheduleStart": "2026-06-03T12:00:00Z",
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
            },
        },
        NOW,
    )
    assert compare_composite(book, 0, ok, NOW, 30.0) is None
    high = composite_now(
        Version.V16,
        {
            "status": "Accepted",
            "connectorId": 0,
            "scheduleStart": "2026-06-03T12:00:00Z",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 32.0}],
            },
        },
        NOW,
    )
    mm = compare_composite(book, 0, high, NOW, 30.0)
    assert mm is not None and mm.kind == "composite_higher" and (mm.sent_limit, mm.reported_limit) == (16.0, 32.0)
    # another unit cannot be compared without the phases: no verdict rather than a false alarm
    watts = composite_now(
        Version.V201,
        {
            "status": "Accepted",
            "schedule": {
                "evseId": 0,
                "duration": 300,
                "scheduleStart": "2026-06-03T12:00:00Z",
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 22000.0}],
            },
        },
        NOW,
    )
    assert compare_composite(book, 0, watts, NOW, 30.0) is None
    assert composite_now(Version.V201, {"status": "Rejected"}, NOW) is None


def test_cadence_after_writes_coalesced_audit_and_hourly_budget() -> None:
    s = CheckSchedule(delay_s=30.0, audit_s=3600.0, per_hour=4)
    assert s.next_due(0.0) is None
    s.after_write(0.0)
    s.after_write(10.0)  # a second write within the delay shares the check
    assert s.next_due(10.0) == 30.0
    s.ran(30.0)
    assert s.next_due(31.0) == 30.0 + 3600.0  # then the audit
    for t in (100.0, 200.0, 300.0):
        s.after_write(t)
        s.ran(t + 30.0)
    s.after_write(400.0)  # a fifth check within the hour waits for the oldest to age out
    assert s.next_due(400.0) == 30.0 + 3600.0


FACTS = limits.StationFacts("CS1", "site", 3, 230.0)


def notify(periods: list[dict], unit: str = "A", **limit: object) -> dict:
    return {
        "evseId": 1,
        "chargingLimit": {"chargingLimitSource": "EMS", **limit},
        "chargingSchedule": [{"id": 1, "chargingRateUnit": unit, "chargingSchedulePeriod": periods}],
    }


def test_21_per_phase_limits_setpoints_and_local_generation() -> None:
    per_phase = limits.station_limit(
        FACTS, notify([{"startPeriod": 0, "limit": 10.0, "limit_L2": 8.0, "limit_L3": 12.0}]), T0, "gw"
    )
    assert per_phase is not None and phase_tuple(per_phase.limit_w) == (2300.0, 1840.0, 2760.0)
    watts = limits.station_limit(
        FACTS, notify([{"startPeriod": 0, "limit": 2000.0, "limit_L2": 1000.0}], "W"), T0, "gw"
    )
    assert watts is not None and phase_tuple(watts.limit_w) == (2000.0, 1000.0, 2000.0)
    # a setpoint-only period limits nothing; a message with only such periods is no limit at all
    assert limits.station_limit(FACTS, notify([{"startPeriod": 0, "setpoint": 5000.0}], "W"), T0, "gw") is None
    # 2.1 local generation: extra capacity, not a limitation; not counted on
    assert (
        limits.station_limit(FACTS, notify([{"startPeriod": 0, "limit": 20.0}], isLocalGeneration=True), T0, "gw")
        is None
    )
    # the 2.0.1 shape still maps as before: a W limit over the station's three phases
    old = limits.station_limit(FACTS, notify([{"startPeriod": 0, "limit": 6900.0}], "W"), T0, "gw")
    assert old is not None and phase_tuple(old.limit_w) == (2300.0, 2300.0, 2300.0)
