"""Worst-case ledger per station and the node budget: unknown means worst case, leases bound it in time."""

from __future__ import annotations

import math

import numpy as np
from gridcharge.allocation.core.budget import (
    ExternalLimitWindow,
    NodeInputs,
    fit_caps,
    node_capacity,
    violations,
)
from gridcharge.allocation.core.failsafe import LeaseState, Sent, StationLedger
from gridcharge.command.v1 import command_pb2 as C
from gridcharge.shared.topology import parse_topology

SMAX, TX = C.PROFILE_PURPOSE_STATION_MAX, C.PROFILE_PURPOSE_TX
FB_KEY, LEASE_KEY = "profile/0/ChargingStationMaxProfile/0", "profile/0/ChargingStationMaxProfile/1"


def ledger() -> StationLedger:
    led = StationLedger("cs1", fallback_a=6, hw_max_a=32, online=True)
    led.sent(Sent("fb", FB_KEY, SMAX, 0, 6, math.inf, 0))
    led.result("fb", C.COMMAND_OUTCOME_ACCEPTED, 1)
    return led


def test_unknown_station_counts_at_hardware_max() -> None:
    led = StationLedger("cs1", fallback_a=6, hw_max_a=32)
    assert led.worst_case_a(0) == 32 and led.in_failsafe(0, 120)
    assert ledger().worst_case_a(2) == 6 and not ledger().in_failsafe(2, 120)


def test_pending_raise_counts_until_answered() -> None:
    led = ledger()
    led.sent(Sent("c1", LEASE_KEY, SMAX, 0, 20, 700, 100))
    assert led.worst_case_a(100) == 20
    led.result("c1", C.COMMAND_OUTCOME_ACCEPTED, 101)
    assert led.worst_case_a(101) == 20 and led.lease_state(LEASE_KEY, 101, 300) is LeaseState.ACTIVE
    assert led.lease_state(LEASE_KEY, 450, 300) is LeaseState.RENEWING
    assert led.worst_case_a(700) == 6  # the lease ended: back at the fallback by itself


def test_rejected_lowering_keeps_the_old_lease_and_failsafe() -> None:
    led = ledger()
    led.sent(Sent("c1", LEASE_KEY, SMAX, 0, 20, 700, 100))
    led.result("c1", C.COMMAND_OUTCOME_ACCEPTED, 101)
    led.sent(Sent("c2", LEASE_KEY, SMAX, 0, 10, 800, 200))
    led.result("c2", C.COMMAND_OUTCOME_REJECTED, 201)
    assert led.worst_case_a(201) == 20 and led.in_failsafe(201, 120)
    assert not led.in_failsafe(400, 120)


def test_timeout_and_callerror_are_unknown_until_the_lease_ends() -> None:
    for outcome in (C.COMMAND_OUTCOME_TIMEOUT, C.COMMAND_OUTCOME_CALL_ERROR):
        led = ledger()
        led.sent(Sent("c1", LEASE_KEY, SMAX, 0, 25, 700, 100))
        led.result("c1", outcome, 130)
        assert led.worst_case_a(300) == 25
        assert led.lease_state(LEASE_KEY, 300, 300) is LeaseState.FAILSAFE
        led.expire(701, 60)
        assert led.worst_case_a(701) == 6


def test_no_answer_at_all_becomes_unknown() -> None:
    led = ledger()
    led.sent(Sent("c1", LEASE_KEY, SMAX, 0, 25, 700, 100))
    late = led.expire(170, 60)
    assert [s.command_id for s in late] == ["c1"] and "c1" in led.uncertain and led.in_failsafe(170, 120)
    # a late Accepted still counts, and replaces older unknowns in the same slot
    led.result("c1", C.COMMAND_OUTCOME_ACCEPTED, 180)
    assert led.worst_case_a(180) == 25 and not led.uncertain


def test_offline_moves_in_flight_to_unknown() -> None:
    led = ledger()
    led.sent(Sent("c1", LEASE_KEY, SMAX, 0, 25, 700, 100))
    led.went_offline(110)
    assert not led.online and led.worst_case_a(110) == 25 and led.in_failsafe(110, 120)


def test_not_sent_outcomes_do_not_count() -> None:
    for outcome in (
        C.COMMAND_OUTCOME_OFFLINE,
        C.COMMAND_OUTCOME_INVALID,
        C.COMMAND_OUTCOME_EXPIRED,
        C.COMMAND_OUTCOME_SUPERSEDED,
        C.COMMAND_OUTCOME_NOT_OWNER,
    ):
        led = ledger()
        led.sent(Sent("c1", LEASE_KEY, SMAX, 0, 25, 700, 100))
        led.result("c1", outcome, 101)
        assert led.worst_case_a(101) == 6


def test_a_lease_below_the_floor_overrides_it_only_while_surely_valid() -> None:
    """OCPP: within a purpose the highest stack level in force wins, so an accepted 0 A lease frees the
    floor — but only until its end minus the clock skew we allow; then the floor counts again."""
    led = ledger()
    led.skew_s = 30.0
    led.sent(Sent("c1", LEASE_KEY, SMAX, 0, 0.0, 1000, 100))
    assert led.worst_case_a(100) == 6  # in flight: it may not be applied yet
    led.result("c1", C.COMMAND_OUTCOME_ACCEPTED, 101)
    assert led.worst_case_a(101) == 0 and led.worst_case_a(969) == 0
    assert led.worst_case_a(971) == 6  # a station clock 30 s fast may have dropped it
    assert led.lease_edges(0, 2000) == [970.0, 1030.0]


def test_a_raised_lease_counts_until_its_end_plus_the_skew_and_is_forgotten_after() -> None:
    led = ledger()
    led.skew_s = 30.0
    led.sent(Sent("c1", LEASE_KEY, SMAX, 0, 20.0, 1000, 100))
    led.result("c1", C.COMMAND_OUTCOME_ACCEPTED, 101)
    led.expire(1010, 60)
    assert led.worst_case_a(1010) == 20 and LEASE_KEY in led.accepted  # a slow station clock keeps it in force
    led.expire(1031, 60)
    assert led.worst_case_a(1031) == 6 and LEASE_KEY not in led.accepted


def test_every_possible_state_counts_while_a_change_is_in_flight() -> None:
    led = ledger()
    led.sent(Sent("c1", LEASE_KEY, SMAX, 0, 0.0, 1000, 100))
    led.result("c1", C.COMMAND_OUTCOME_ACCEPTED, 101)
    led.sent(Sent("c2", LEASE_KEY, SMAX, 0, 16.0, 900, 200))  # a raise on its way
    assert led.worst_case_a(200) == 16 and led.held_a(200) == 16
    led.result("c2", C.COMMAND_OUTCOME_REJECTED, 201)
    assert led.worst_case_a(201) == 0 and led.held_a(201) == 0  # still the accepted 0 A lease


def test_tx_profiles_do_not_lift_the_station_worst_case() -> None:
    led = ledger()
    led.sent(Sent("t", "profile/1/TxProfile/1", TX, 1, 32, 700, 100))
    assert led.worst_case_a(100) == 6


TOPO = parse_topology(
    {
        "nominal_voltage_v": 230,
        "nodes": [
            {"id": "site", "limit_a": [40, 40, 40], "metered": True, "safety_margin_pct": 10},
            {"id": "p", "parent": "site", "limit_a": [30, 30, 30]},
        ],
        "stations": [
            {"id": "a", "node": "p"},
            {"id": "b", "node": "p", "phase_map": ["L2"]},
            {"id": "c", "node": "site"},
        ],
    }
)


def test_capacity_sources_and_stale_load() -> None:
    now = 1000.0
    cap = node_capacity(TOPO, {}, [], now, [now])
    # metered site without live load or forecast: only the fallbacks under it (6 + 6 + 6 on L2)
    assert cap.w["site"][1, 0] == (18 * 230) and cap.source["site"][1] == "failsafe:stale_load"
    assert cap.w["p"][0, 0] == 30 * 230 * 0.95  # default margin 5 %
    inputs = {"site": NodeInputs(base_load_w=(2300, 0, 0), load_w=(2300, 0, 0), load_at=now - 10)}
    cap = node_capacity(TOPO, inputs, [], now, [now])
    assert cap.w["site"][0, 0] == 40 * 230 * 0.9 - 2300 and cap.source["site"][0] == "base_load"
    ext = ExternalLimitWindow("site", "dso1", "dso", now - 1, now + 60, (4600,) * 3, (2300,) * 3, now - 1, 30)
    cap = node_capacity(TOPO, inputs, [ext], now, [now, now + 120])
    assert cap.source["site"][1] == "external:dso1" and cap.w["site"][1, 0] == 4600 * 0.9
    assert cap.w["site"][1, 1] == 40 * 230 * 0.9  # outside the window
    stale = node_capacity(TOPO, inputs, [ext], now + 45, [now + 45])
    assert stale.w["site"][1, 0] == 2300 * 0.9  # source went quiet: its fallback value


def test_fit_caps_raises_only_within_room_lowerings_always() -> None:
    cap = {"site": np.full(3, 40 * 230.0), "p": np.full(3, 30 * 230.0)}
    wc = {"a": 6.0, "b": 6.0, "c": 6.0}
    ok = fit_caps(TOPO, cap, wc, {"a": 32.0, "b": 32.0, "c": 3.0}, ["a", "b", "c"])
    assert ok["c"] == 3.0  # a lowering
    assert ok["a"] == 24.0  # p has 30 A: b keeps 6 on L2
    assert ok["b"] == 6.0  # no room left on p/L2
    assert not violations(TOPO, cap, {**wc, **ok})


def test_over_capacity_never_cuts_below_the_floor() -> None:
    """Σ floors above the capacity (margin, limit drop): cutting a car below its floor frees nothing."""
    cap = {"site": np.full(3, 40 * 230.0), "p": np.full(3, 10 * 230.0)}
    wc = {"a": 6.0, "b": 6.0, "c": 6.0}
    floors = dict(wc)
    ok = fit_caps(TOPO, cap, wc, {"a": 6.0, "b": 6.0}, ["a", "b"], floor_a=floors)
    assert ok == {"a": 6.0, "b": 6.0}
    # above the floor it does cut, least important (last in order) first
    wc2 = {"a": 16.0, "b": 6.0, "c": 6.0}
    ok = fit_caps(
        TOPO,
        {"site": np.full(3, 40 * 230.0), "p": np.full(3, 20 * 230.0)},
        wc2,
        {"a": 16.0, "b": 6.0},
        ["b", "a"],
        floor_a=floors,
    )
    assert ok["a"] == 14.0 and ok["b"] == 6.0
