"""Sessions: defaults, EV needs, preferences, meter values, tolerance of bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gridcharge.allocation.core.sessions import SessionBook
from gridcharge.shared.topology import parse_topology

NOW = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def book() -> SessionBook:
    t = parse_topology(
        {
            "nodes": [{"id": "site", "limit_a": [100, 100, 100]}],
            "stations": [
                {
                    "id": "cs1",
                    "node": "site",
                    "max_current_a": 32,
                    "evses": [{"id": 1}, {"id": 2, "max_current_a": 16}],
                },
                {"id": "cs2", "node": "site", "phase_map": ["L2"], "max_current_a": 32},
            ],
            "session_defaults": {"departure_after_h": 6, "energy_wh": 15000, "priority": 2},
        }
    )
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
    assert s.max_current_a == 32 and s.min_current_a == 8  # EV max clamped to hardware
    b.needs("cs1", 1, None, float("nan"), -1, float("inf"), 9)  # garbage changes nothing
    assert s.energy_needed_wh == 30000 and s.max_current_a == 32 and s.phases == 3


def test_preferences_win_over_ev_needs() -> None:
    b = book()
    s = b.start("cs1", 1, "t1", NOW)
    assert s is not None
    b.set_preferences(s.session_id, departure=NOW + timedelta(hours=1), energy_wh=5000, priority=5)
    b.needs("cs1", 1, NOW + timedelta(hours=9), 40000, 0, 0, 0)
    assert s.departure == NOW + timedelta(hours=1) and s.energy_needed_wh == 5000 and s.priority == 5


def test_meter_values_energy_current_and_order() -> None:
    b = book()
    s = b.start("cs1", 1, "t1", NOW, meter_start_wh=1000)
    assert s is not None
    b.meter("cs1", 1, "t1", NOW + timedelta(minutes=1), 1500, 16.0, None, granted_a=20)
    assert s.delivered_wh == 500 and s.measured_current_a == 16 and s.below_samples == 1
    b.meter("cs1", 1, "t1", NOW + timedelta(minutes=2), 1800, 10.0, None, granted_a=20)
    assert s.draw_cap_a == 12.0 and s.draw_limit_a(NOW + timedelta(minutes=2)) == 12.0  # drawn + 2 A
    b.meter("cs1", 1, "t1", NOW + timedelta(seconds=30), 9999, 30.0, None, granted_a=20)  # out of order
    assert s.delivered_wh == 800 and s.measured_current_a == 10
    assert s.remaining_wh == 15000 - 800
    assert s.draw_limit_a(NOW + timedelta(hours=1)) is None  # stale samples say nothing


def at(minutes: float) -> datetime:
    return NOW + timedelta(minutes=minutes)


def test_a_car_drawing_less_is_capped_once_not_every_cycle() -> None:
    """The old taper flag reset as soon as the grant came down to draw + 2 A, so the next plan raised it
    again and the next samples lowered it again: a write per cycle. The learnt cap stays."""
    b = book()
    s = b.start("cs1", 1, "t1", NOW)
    assert s is not None
    b.meter("cs1", 1, "t1", at(1), None, 16.0, None, granted_a=32)
    b.meter("cs1", 1, "t1", at(2), None, 16.0, None, granted_a=32)
    assert s.draw_cap_a == 18.0
    caps = set()
    for k in range(3, 30):  # granted its cap now, it keeps drawing 16 A (an on-board charger limit)
        b.meter("cs1", 1, "t1", at(k), None, 16.0, None, granted_a=18.0)
        caps.add(s.draw_cap_a)
    assert caps == {18.0}


def test_a_tapering_car_is_capped_again_only_when_it_frees_twice_the_margin() -> None:
    b = book()
    s = b.start("cs1", 1, "t1", NOW)
    assert s is not None
    for k in (1, 2):
        b.meter("cs1", 1, "t1", at(k), None, 20.0, None, granted_a=32)
    assert s.draw_cap_a == 22.0
    for k, drawn in ((3, 19.0), (4, 18.5), (5, 18.1)):  # less than 4 A below the cap: kept
        b.meter("cs1", 1, "t1", at(k), None, drawn, None, granted_a=22.0)
    assert s.draw_cap_a == 22.0
    for k in (6, 7):
        b.meter("cs1", 1, "t1", at(k), None, 17.0, None, granted_a=22.0)
    assert s.draw_cap_a == 19.0


def test_a_capped_car_that_takes_its_whole_cap_is_released_and_a_full_one_wakes_up() -> None:
    b = book()
    s = b.start("cs1", 1, "t1", NOW)
    assert s is not None
    for k in (1, 2):
        b.meter("cs1", 1, "t1", at(k), None, 10.0, None, granted_a=32)
    assert s.draw_cap_a == 12.0
    b.meter("cs1", 1, "t1", at(3), None, 11.8, None, granted_a=8.0)  # offered less than its cap: says nothing
    b.meter("cs1", 1, "t1", at(4), None, 8.0, None, granted_a=8.0)
    assert s.draw_cap_a == 12.0
    for k in (5, 6):
        b.meter("cs1", 1, "t1", at(k), None, 11.9, None, granted_a=12.0)
    assert s.draw_cap_a is None
    for k in (7, 8):
        b.meter("cs1", 1, "t1", at(k), None, 0.0, None, granted_a=16.0)
    assert s.draw_cap_a == 0.0  # full: it draws nothing
    for k in (9, 10):
        b.meter("cs1", 1, "t1", at(k), None, 6.0, None, granted_a=6.0)  # at its fallback it draws again
    assert s.draw_cap_a is None


def test_samples_taken_before_a_grant_change_took_effect_are_not_judged() -> None:
    b = book()
    s = b.start("cs1", 1, "t1", NOW)
    assert s is not None
    for k in (1, 2):  # just raised to 32 A: these samples may still show the old 10 A
        b.meter(
            "cs1",
            1,
            "t1",
            at(k) - timedelta(seconds=50),
            None,
            10.0,
            None,
            granted_a=32,
            granted_since=at(k) - timedelta(seconds=55),
        )
    assert s.draw_cap_a is None and s.below_samples == 0


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
