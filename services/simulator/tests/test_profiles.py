"""The composite-schedule evaluator against the OCPP 1.6 / 2.0.1 smart-charging rules."""

from __future__ import annotations

import math

import pytest
from gridcharge.simulator.ev import Ev
from gridcharge.simulator.profiles import (
    Period,
    Profile,
    ProfileError,
    ProfileStore,
    Transaction,
    parse_ocpp_profile,
)

T0 = 1_780_000_000.0
V = 230.0


def prof(
    pid: int,
    purpose: str,
    limit: float,
    *,
    evse: int = 0,
    stack: int = 0,
    unit: str = "A",
    duration: float | None = None,
    valid_to: float | None = None,
    kind: str = "Absolute",
    start: float | None = T0,
    periods: tuple[Period, ...] | None = None,
    tx: str | None = None,
) -> Profile:
    return Profile(
        profile_id=pid,
        stack_level=stack,
        purpose=purpose,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        rate_unit=unit,  # type: ignore[arg-type]
        periods=periods or (Period(0, limit),),
        evse_id=evse,
        duration_s=duration,
        valid_to=valid_to,
        start_schedule=start,
        transaction_id=tx,
        installed_at=T0,
    )


def test_no_profile_means_no_limit() -> None:
    s = ProfileStore()
    assert s.evse_limit_a(1, T0, None, 3, V)[0] is None
    assert s.station_limit_a(T0, 3, V) is None


def test_tx_overrides_txdefault_and_lease_expiry_falls_back() -> None:
    s = ProfileStore()
    tx = Transaction("42", 1, T0)
    s.install(prof(1, "TxDefault", 6.0), None)
    s.install(prof(2, "Tx", 32.0, evse=1, duration=300), tx)
    assert s.evse_limit_a(1, T0 + 10, tx, 3, V)[:1] == (32.0,)
    # lease (duration) expired -> station-wide TxDefault applies by itself
    lim, _, src = s.evse_limit_a(1, T0 + 300, tx, 3, V)
    assert (lim, src) == (6.0, "TxDefault")


def test_valid_to_expiry_and_quirk_ignoring_it() -> None:
    tx = Transaction("1", 1, T0)
    for ignore, expected in ((False, 6.0), (True, 20.0)):
        s = ProfileStore(ignore_valid_to=ignore)
        s.install(prof(1, "TxDefault", 6.0), None)
        s.install(prof(2, "Tx", 20.0, evse=1, valid_to=T0 + 60), tx)
        assert s.evse_limit_a(1, T0 + 61, tx, 3, V)[0] == expected


def test_highest_active_stack_level_wins() -> None:
    s = ProfileStore()
    s.install(prof(1, "TxDefault", 10.0, stack=0), None)
    s.install(prof(2, "TxDefault", 16.0, stack=1, start=T0 + 100), None)  # not yet started
    assert s.evse_limit_a(1, T0 + 50, None, 3, V)[0] == 10.0
    assert s.evse_limit_a(1, T0 + 150, None, 3, V)[0] == 16.0


def test_evse_txdefault_overrides_station_wide() -> None:
    s = ProfileStore()
    s.install(prof(1, "TxDefault", 10.0, evse=0), None)
    s.install(prof(2, "TxDefault", 8.0, evse=2), None)
    assert s.evse_limit_a(1, T0, None, 3, V)[0] == 10.0
    assert s.evse_limit_a(2, T0, None, 3, V)[0] == 8.0


def test_replacement_rules() -> None:
    s = ProfileStore()
    s.install(prof(1, "TxDefault", 10.0, stack=1), None)
    s.install(prof(9, "TxDefault", 12.0, stack=1), None)  # same purpose+stack+evse replaces
    assert [p.profile_id for p in s.profiles] == [9]
    s.install(prof(9, "StationMax", 40.0, stack=0), None)  # same id replaces
    assert [p.purpose for p in s.profiles] == ["StationMax"]


def test_tx_profile_needs_transaction_and_dies_with_it() -> None:
    s = ProfileStore()
    with pytest.raises(ProfileError):
        s.install(prof(2, "Tx", 16.0, evse=1), None)
    tx = Transaction("7", 1, T0)
    s.install(prof(2, "Tx", 16.0, evse=1), tx)
    s.end_transaction("7")
    assert s.profiles == []


def test_periods_relative_and_watts() -> None:
    s = ProfileStore()
    tx = Transaction("3", 1, T0 + 1000)
    periods = (Period(0, 11_040.0), Period(600, 4_140.0, 1))
    s.install(prof(5, "Tx", 0, evse=1, unit="W", kind="Relative", start=None, periods=periods), tx)
    lim, n, _ = s.evse_limit_a(1, T0 + 1100, tx, 3, V)
    assert lim is not None and math.isclose(lim, 16.0)
    assert n is None
    lim, n, _ = s.evse_limit_a(1, T0 + 1700, tx, 3, V)
    assert lim is not None and math.isclose(lim, 18.0) and n == 1


def test_station_max_and_recurring() -> None:
    s = ProfileStore()
    p = Profile(
        profile_id=1,
        stack_level=0,
        purpose="StationMax",
        kind="Recurring",
        rate_unit="A",
        periods=(Period(0, 32.0), Period(3600, 16.0)),
        recurrency="Daily",
        start_schedule=T0,
    )
    s.install(p, None)
    assert s.station_limit_a(T0 + 86_400 + 10, 3, V) == 32.0
    assert s.station_limit_a(T0 + 86_400 + 4000, 3, V) == 16.0


def test_parse_both_versions_and_reject_garbage() -> None:
    p16 = parse_ocpp_profile(
        {
            "charging_profile_id": 3,
            "stack_level": 1,
            "charging_profile_purpose": "TxDefaultProfile",
            "charging_profile_kind": "Absolute",
            "valid_to": "2026-06-01T12:00:00Z",
            "charging_schedule": {
                "charging_rate_unit": "A",
                "start_schedule": "2026-06-01T00:00:00Z",
                "charging_schedule_period": [{"start_period": 0, "limit": 10}],
            },
        },
        0,
        T0,
    )
    assert p16.purpose == "TxDefault" and p16.valid_to is not None
    p201 = parse_ocpp_profile(
        {
            "id": 4,
            "stack_level": 0,
            "charging_profile_purpose": "ChargingStationMaxProfile",
            "charging_profile_kind": "Absolute",
            "charging_schedule": [
                {
                    "id": 1,
                    "charging_rate_unit": "W",
                    "duration": 60,
                    "charging_schedule_period": [{"start_period": 0, "limit": 22000.0}],
                }
            ],
        },
        0,
        T0,
    )
    assert p201.purpose == "StationMax" and p201.rate_unit == "W" and p201.duration_s == 60
    for bad in (
        {},
        {"id": "x"},
        {"id": 1, "charging_profile_purpose": "Nope"},
        {
            "id": 1,
            "stack_level": 0,
            "charging_profile_purpose": "TxProfile",
            "charging_profile_kind": "Absolute",
            "charging_schedule": {
                "charging_rate_unit": "A",
                "charging_schedule_period": [{"start_period": 5, "limit": 1}],
            },
        },
    ):
        with pytest.raises(ProfileError):
            parse_ocpp_profile(bad, 1, T0)


def test_composite_schedule_change_points() -> None:
    s = ProfileStore()
    tx = Transaction("1", 1, T0)
    s.install(prof(1, "TxDefault", 6.0), None)
    s.install(prof(2, "Tx", 20.0, evse=1, duration=120), tx)
    assert s.composite_schedule(1, T0, 300, tx, 3, V) == [(0, 20.0), (120, 6.0)]


def test_ev_taper_min_current_and_energy() -> None:
    ev = Ev(
        "e",
        battery_wh=10_000,
        arrival_soc=0.5,
        target_soc=1.0,
        arrival_s=0,
        departure_s=3600,
        max_current_a=16,
        phases=3,
    )
    assert ev.draw_a(None) == (16, 3)
    assert ev.draw_a(5.0)[0] == 0.0  # below the IEC 61851 minimum: no charging
    assert ev.draw_a(10.0, 1) == (10.0, 1)
    wh = ev.charge(16, 3, 3600, V)
    assert math.isclose(wh, 5000.0) and ev.full and ev.remaining_wh == 0
    ev2 = Ev(
        "f", battery_wh=10_000, arrival_soc=0.9, target_soc=1.0, arrival_s=0, departure_s=1, max_current_a=32, phases=3
    )
    assert 6.0 <= ev2.acceptable_current_a() < 32


@pytest.mark.parametrize(
    ("ev_phases", "number_phases", "expected_a"), [(1, 1, 24.0), (3, 1, 8.0), (1, 3, 24.0), (3, 3, 8.0)]
)
def test_a_w_station_maximum_bounds_the_total_power_whatever_phases_the_car_uses(
    ev_phases: int, number_phases: int, expected_a: float
) -> None:
    """A station maximum in W is the station's total power (OCPP 1.6 §3.13, 2.0.1 K01): a single-phase car
    may draw all of it on L1, a three-phase car a third on each phase — whatever numberPhases says."""
    from gridcharge.shared.topology import parse_topology
    from gridcharge.simulator.stations import StationModel

    topo = parse_topology(
        {"nodes": [{"id": "n", "limit_a": [63, 63, 63]}], "stations": [{"id": "cs", "node": "n", "max_current_a": 32}]}
    )
    m = StationModel(topo.station_by_id["cs"], V)
    m.profiles.install(prof(1, "StationMax", 24.0 * V, unit="W", periods=(Period(0, 24.0 * V, number_phases),)), None)
    e = m.evses[1]
    e.ev = Ev("ev", 60_000, 0.2, 0.9, T0, T0 + 36_000, max_current_a=32, phases=ev_phases)
    e.tx = Transaction("tx", 1, T0)
    m.step(T0 + 1, 10.0)
    assert e.current_a == pytest.approx(expected_a)
    assert e.phases_used == ev_phases
    assert sum(m.grid_currents_a()) * V == pytest.approx(24.0 * V)
