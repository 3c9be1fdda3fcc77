"""Sessions: defaults, EV needs, preferences, meter values, tolerance of bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gridcharge.allocation.core.sessions import SessionBook
from gridcharge.shared.topology import parse_topology

NOW = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def book() -> SessionBook:
    t = parse_topology({
        "nodes": [{"id": "site", "limit_a": [100, 100, 100]}],
        "stations": [
            {"id": "cs1", "node": "site", "max_current_a": 32, "evses": [{"id": 1}, {"id": 2, "max_current_a": 16}]},
            {"id": "cs2", "node": "site", "phase_map": ["L2"], "max_current_a": 32},
        ],
        "session_defaults": {"departure_after_h": 6, "energy_wh": 15000, "priority": 2},
    })
    return SessionBook(dict(t.station_by_id), t.session_defaults)


def test_defaults_when_driver_gives_nothing() -> None:
    b = book()
    s = b.start("cs1", 2, "t1", NOW)
    assert s is not None
    assert s.departure == NOW + timedelta(hours=6) and s.energy_needed_wh == 15000 and s.priority == 2
    assert s.max_current_a == 16 and s.phases == 3
    s2 = b.start("cs2", 1, "t2", NOW)
    assert s2 is not None and s2.phases == 1


def test_unknown_station_evse_or_empty_tx_ignored() -> None:
    b = book()
    assert b.start("nope", 1, "t", NOW) is None
    assert b.start("cs1", 7, "t", NOW) is None
    assert b.start("cs1", 1, "", NOW) is None
    assert len(b) == 0


def test_needs_before_and_after_start_and_clamped() -> None:
    b = book()
    assert b.needs("cs1", 1, NOW + timedelta(hours=2), 30000, 8, 63, 3)
    s = b.start("cs1", 1, "t1", NOW)
    assert s is not None and s.energy_needed_wh == 30000 and s.departure == NOW + timedelta(hours=2)
    assert s.max_current_a == 32 and s.min_current_a == 8      # EV max clamped to hardware
    b.needs("cs1", 1, None, float("nan"), -1, float("inf"), 9)  # garbage changes nothing
    assert s.energy_needed_wh == 30000 and s.max_current_a == 32 and s.phases == 3


def test_preferences_win_over_ev_needs() -> None:
    b = book()
    s = b.start("cs1", 1, "t1", NOW)
    assert s is not None
    b.set_preferences(s.session_id, departure=NOW + timedelta(hours=1), energy_wh=5000, priority=5)
    b.needs("cs1", 1, NOW + timedelta(hours=9), 40000, 0, 0, 0)
    assert s.departure == NOW + timedelta(hours=1) and s.energy_needed_wh == 5000 and s.priority == 5


def test_meter_values_energy_current_taper_and_order() -> None:
    b = book()
    s = b.start("cs1", 1, "t1", NOW, meter_start_wh=1000)
    assert s is not None
    b.meter("cs1", 1, "t1", NOW + timedelta(minutes=1), 1500, 16.0, None, granted_a=20)
    assert s.delivered_wh == 500 and s.measured_current_a == 16 and s.below_grant_samples == 1
    b.meter("cs1", 1, "t1", NOW + timedelta(minutes=2), 1800, 10.0, None, granted_a=20)
    assert s.tapering(NOW + timedelta(minutes=2))
    b.meter("cs1", 1, "t1", NOW + timedelta(seconds=30), 9999, 30.0, None, granted_a=20)  # out of order
    assert s.delivered_wh == 800 and s.measured_current_a == 10
    assert s.remaining_wh == 15000 - 800
    assert not s.tapering(NOW + timedelta(hours=1))   # stale samples say nothing


def test_end_by_transaction_id() -> None:
    b = book()
    b.start("cs1", 1, "t1", NOW)
    assert b.end("cs1", 0, "other") is None
    ended = b.end("cs1", 0, "t1")
    assert ended is not None and len(b) == 0


def test_guessed_need_is_extended_when_reached_known_need_is_not() -> None:
    """A 1.6 car's need is the site default (a guess): reaching it must not park a car that still charges."""
    b = book()
    guessed = b.start("cs1", 1, "t1", NOW, meter_start_wh=0)
    known = b.start("cs1", 2, "t2", NOW, meter_start_wh=0)
    assert guessed is not None and known is not None
    b.needs("cs1", 2, None, 15000, 0, 0, 0)
    assert guessed.need_guessed and not known.need_guessed
    for s, tx in ((guessed, "t1"), (known, "t2")):
        b.meter("cs1", s.evse_id, tx, NOW + timedelta(hours=3), 15200, 16.0, None, granted_a=16)
    assert guessed.energy_needed_wh == 15200 + 15000 and guessed.remaining_wh == 15000
    assert known.energy_needed_wh == 15000 and known.remaining_wh == 0
    restored = SessionBook(b.stations, b.defaults)
    again = restored.restore(known.dump())
    assert again is not None and not again.need_guessed
