"""The §14a dimming state machine and the statutory minimum (pure; times in s, powers in W)."""

from __future__ import annotations

import math

import pytest
from gridcharge.controlbox.core.dimming import (
    DimmingRules,
    DimmingState,
    simultaneity_factor,
    statutory_minimum_w,
)
from hypothesis import given, settings
from hypothesis import strategies as st

T0 = 1_780_000_000.0


def test_statutory_minimum_direct_and_ems() -> None:
    assert statutory_minimum_w(1, ems=False) == 4200
    assert statutory_minimum_w(3, ems=False) == 3 * 4200  # direct control: 4.2 kW each
    assert statutory_minimum_w(1, ems=True) == 4200
    assert statutory_minimum_w(2, ems=True) == pytest.approx(4200 + 1 * 4200 * 0.8)  # 7.56 kW
    assert statutory_minimum_w(5, ems=True) == pytest.approx(4200 + 4 * 4200 * 0.65)  # 15.12 kW
    assert statutory_minimum_w(9, ems=True) == pytest.approx(4200 + 8 * 4200 * 0.45)
    assert statutory_minimum_w(20, ems=True) == pytest.approx(4200 + 19 * 4200 * 0.45)
    assert [simultaneity_factor(n) for n in range(1, 11)] == [1.0, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.45]
    with pytest.raises(ValueError):
        statutory_minimum_w(0, ems=True)


def test_relay_dims_to_the_minimum_while_closed() -> None:
    s = DimmingState(DimmingRules(minimum_w=4200, relay=True, relay_loss_s=30), T0)
    s.relay_read(False, T0)
    assert not s.evaluate(T0).active
    s.relay_read(True, T0 + 10)
    d = s.evaluate(T0 + 10)
    assert (d.limit_w, d.reason, d.until) == (4200, "relay", None)
    s.relay_read(False, T0 + 20)
    assert not s.evaluate(T0 + 20).active


def test_relay_limit_never_below_minimum_and_loss_is_worst_case() -> None:
    s = DimmingState(DimmingRules(minimum_w=7560, relay=True, relay_limit_w=3000, relay_loss_s=30), T0)
    s.relay_read(True, T0)
    assert s.evaluate(T0).limit_w == 7560  # 3 kW asked, 7.56 kW guaranteed
    s.relay_read(False, T0 + 1)
    assert not s.evaluate(T0 + 30).active
    d = s.evaluate(T0 + 31)  # no successful read for 30 s
    assert (d.limit_w, d.reason) == (7560, "relay_unreadable")
    s.relay_read(False, T0 + 40)
    assert not s.evaluate(T0 + 40).active
    never = DimmingState(DimmingRules(minimum_w=4200, relay=True, relay_loss_s=0), T0)
    assert not never.evaluate(T0 + 10_000).active  # 0 = a lost contact is never judged


def lpc_rules(**kw: float) -> DimmingRules:
    return DimmingRules(minimum_w=4200, relay=False, lpc=True, **kw)


def test_lpc_limit_with_duration_and_heartbeats() -> None:
    s = DimmingState(lpc_rules(), T0)
    assert s.lpc_state(T0) == "init"
    s.lpc_command(True, 6000, 900, T0 + 5)
    d = s.evaluate(T0 + 5)
    assert (d.limit_w, d.reason, d.until) == (6000, "lpc", T0 + 905)
    for t in range(65, 905, 60):  # heartbeats every 60 s
        s.heartbeat(T0 + t)
    assert s.lpc_state(T0 + 904) == "limited"
    assert s.lpc_state(T0 + 905) == "unlimited_controlled"  # duration over
    assert not s.evaluate(T0 + 905).active
    s.lpc_command(True, 1000, None, T0 + 906)  # below the minimum, open-ended
    d = s.evaluate(T0 + 906)
    assert (d.limit_w, d.until) == (4200, None)
    s.lpc_command(False, None, None, T0 + 907)
    assert s.lpc_state(T0 + 907) == "unlimited_controlled"


def test_lpc_heartbeat_loss_failsafe_then_autonomous() -> None:
    s = DimmingState(lpc_rules(failsafe_limit_w=5000, failsafe_duration_s=7200), T0)
    s.lpc_command(False, None, None, T0)
    assert s.lpc_state(T0 + 119) == "unlimited_controlled"
    d = s.evaluate(T0 + 120)  # 120 s without a heartbeat
    assert s.lpc_state(T0 + 120) == "failsafe"
    assert (d.limit_w, d.reason, d.until) == (5000, "lpc_failsafe", T0 + 120 + 7200)
    assert s.evaluate(T0 + 7319).limit_w == 5000
    assert s.lpc_state(T0 + 7320) == "unlimited_autonomous"
    assert not s.evaluate(T0 + 7320).active
    s.heartbeat(T0 + 8000)  # the energy guard is back
    assert s.lpc_state(T0 + 8000) == "unlimited_controlled"


def test_lpc_heartbeat_returns_during_failsafe() -> None:
    s = DimmingState(lpc_rules(), T0)
    s.lpc_command(True, 8000, None, T0)
    assert s.evaluate(T0 + 200).reason == "lpc_failsafe"  # the failsafe (4.2 kW) replaces the 8 kW limit
    assert s.evaluate(T0 + 200).limit_w == 4200
    s.heartbeat(T0 + 300)
    d = s.evaluate(T0 + 300)
    assert (d.limit_w, d.reason) == (8000, "lpc")  # the guard's own command again


def test_lpc_init_without_heartbeat_goes_failsafe() -> None:
    s = DimmingState(lpc_rules(), T0)
    assert not s.evaluate(T0 + 119).active
    assert s.evaluate(T0 + 120).reason == "lpc_failsafe"


def test_failsafe_values_are_clamped_and_validated() -> None:
    s = DimmingState(lpc_rules(), T0)
    s.lpc_failsafe_values(3000, 60, T0)  # 1 min asked: at least 2 h
    assert s.failsafe_duration_s == 7200
    assert s.evaluate(T0 + 130).limit_w == 4200  # 3 kW asked: the minimum
    s.lpc_failsafe_values(None, 10 * 86400, T0)
    assert s.failsafe_duration_s == 86400
    for bad in (math.nan, math.inf, -1.0, 2e7):
        with pytest.raises(ValueError):
            s.lpc_command(True, bad, None, T0)
        with pytest.raises(ValueError):
            s.lpc_failsafe_values(bad, None, T0)
    with pytest.raises(ValueError):
        DimmingRules(minimum_w=4200, failsafe_duration_s=3600)
    with pytest.raises(ValueError):
        DimmingRules(minimum_w=4200, heartbeat_timeout_s=300)


def test_lowest_active_input_wins() -> None:
    s = DimmingState(DimmingRules(minimum_w=4200, relay=True, lpc=True, relay_limit_w=9000), T0)
    s.relay_read(True, T0)
    s.lpc_command(True, 6000, 600, T0)
    d = s.evaluate(T0 + 1)
    assert (d.limit_w, d.reason, d.until) == (6000, "lpc", None)  # the relay has no known end
    s.lpc_command(False, None, None, T0 + 2)
    s.relay_read(True, T0 + 2)
    assert s.evaluate(T0 + 2).limit_w == 9000


@settings(max_examples=200, deadline=None)
@given(
    devices=st.integers(1, 50),
    ems=st.booleans(),
    relay=st.booleans(),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["relay", "cmd", "hb", "fs"]),
            st.floats(0, 20_000),
            st.one_of(st.floats(-1e4, 2e7), st.just(math.nan)),
            st.one_of(st.floats(-10, 1e5), st.just(math.nan)),
        ),
        max_size=12,
    ),
)
def test_never_below_the_statutory_minimum(
    devices: int, ems: bool, relay: bool, ops: list[tuple[str, float, float, float]]
) -> None:
    minimum = statutory_minimum_w(devices, ems)
    s = DimmingState(DimmingRules(minimum_w=minimum, relay=relay, lpc=True), T0)
    t = T0
    for kind, dt, value, dur in ops:
        t += dt
        try:
            if kind == "relay":
                s.relay_read(value > 0, t)
            elif kind == "cmd":
                s.lpc_command(value > 1e6, value, dur, t)
            elif kind == "hb":
                s.heartbeat(t)
            else:
                s.lpc_failsafe_values(value, dur, t)
        except ValueError:
            pass
        d = s.evaluate(t)
        assert d.limit_w is None or d.limit_w >= minimum
