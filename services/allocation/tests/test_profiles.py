"""SetChargingProfile content: ids, leases, units, periods, minimum rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from gridcharge.allocation.core import profiles as P
from gridcharge.command.v1 import command_pb2

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_fixed_ids_and_keys_per_evse_purpose_stack() -> None:
    ids = {P.profile_id(e, pu, st) for e in (0, 1, 2) for pu in (P.STATION_MAX, P.TX, P.TX_DEFAULT) for st in (0, 1)}
    assert len(ids) == 18
    assert P.profile_id(0, P.STATION_MAX, 0) == 1000
    assert P.command_key(1, P.TX, 1) == "profile/1/TxProfile/1"
    assert all(0 < i < 2**31 for i in ids)


def test_rate_unit_prefers_amps() -> None:
    assert P.rate_unit_for([]) == P.RATE_A
    assert P.rate_unit_for([P.RATE_W, P.RATE_A]) == P.RATE_A
    assert P.rate_unit_for([P.RATE_W]) == P.RATE_W


def test_watts_are_total_over_phases_amps_per_phase() -> None:
    assert P.amps_to_watts(16, 230, 3) == pytest.approx(11040)
    assert P.amps_to_watts(16, 230, 1) == pytest.approx(3680)
    assert P.watts_to_amps(11040, 230, 3) == pytest.approx(16)
    t = P.StationProfileTarget(rate_unit=P.RATE_W, phases=3, voltage_v=230)
    p = P.tx_profile(1, "9", [(NOW, 16.0)], NOW, 600, t)
    assert p.profile.rate_unit == P.RATE_W
    assert p.profile.periods[0].limit == pytest.approx(11040)
    assert p.profile.periods[0].number_phases == 3
    assert P.profile_limit_a(p, t) == pytest.approx(16)


def test_min_rate_and_granularity() -> None:
    assert P.quantise_a(5.99) == 0.0
    assert P.quantise_a(6.0) == 6.0
    assert P.quantise_a(16.27) == pytest.approx(16.2)  # never rounds up
    assert P.quantise_a(-3) == 0.0 and P.quantise_a(float("nan")) == 0.0


def test_tx_lease_is_bounded_and_backdated() -> None:
    p = P.tx_profile(2, "tx-1", [(NOW, 20.0)], NOW, 600, P.StationProfileTarget())
    pr = p.profile
    assert p.evse_id == 2 and pr.purpose == command_pb2.PROFILE_PURPOSE_TX and pr.transaction_id == "tx-1"
    assert pr.valid_from.ToDatetime(tzinfo=UTC) == NOW - timedelta(seconds=P.BACKDATE_S)
    assert pr.valid_to.ToDatetime(tzinfo=UTC) == NOW + timedelta(seconds=600)
    assert pr.duration_s == 600 + P.BACKDATE_S
    assert pr.periods[0].start_period_s == 0 and pr.periods[0].limit == 20.0


def test_periods_bounded_by_capability_never_raise() -> None:
    steps = [(NOW + timedelta(minutes=m), a) for m, a in ((0, 10), (1, 32), (2, 8), (3, 16), (4, 6), (5, 0))]
    t = P.StationProfileTarget(max_periods=3)
    p = P.tx_profile(1, "x", steps, NOW, 900, t)
    per = p.profile.periods
    assert len(per) <= 3
    starts = [x.start_period_s for x in per]
    assert starts == sorted(starts) and starts[0] == 0
    # at every original step the profile allows at most what was asked
    for when, a in steps:
        off = (when - (NOW - timedelta(seconds=P.BACKDATE_S))).total_seconds()
        lim = [x.limit for x in per if x.start_period_s <= off][-1]
        assert lim <= P.quantise_a(a) + 1e-9


def test_only_the_lease_window_is_sent() -> None:
    steps = [(NOW, 10.0), (NOW + timedelta(minutes=30), 32.0)]
    p = P.tx_profile(1, "x", steps, NOW, 600, P.StationProfileTarget())
    assert [x.limit for x in p.profile.periods] == [10.0]


def test_fallback_has_no_end_and_station_lease_has_one() -> None:
    t = P.StationProfileTarget()
    fb = P.fallback_profile(6.0, NOW, t)
    assert fb.evse_id == 0 and fb.profile.stack_level == 0 and not fb.profile.HasField("valid_to")
    lease = P.station_lease_profile(24.0, NOW, 600, t)
    assert lease.evse_id == 0 and lease.profile.stack_level == 1
    assert lease.profile.valid_to.ToDatetime(tzinfo=UTC) == NOW + timedelta(seconds=600)
    assert lease.profile.periods[0].limit == 24.0
