"""Grid-aware fallbacks: where Σ fallbacks would not fit a node over the horizon (a DSO window, a base-load
peak), the fallback profiles are lowered ahead of time for that span, so stations stay within the limit
even if the allocator dies; and a window starting inside a slot already binds that slot."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
from gridcharge.allocation.core import profiles as P
from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig, ProfileCommand
from gridcharge.allocation.core.budget import ExternalLimitWindow, fit_caps, node_capacity, node_draw_w
from gridcharge.allocation.core.failsafe import FALLBACK_KEY, Sent, StationLedger
from gridcharge.allocation.core.fallbacks import RELAX_S as FALLBACK_RELAX_S
from gridcharge.allocation.core.model import Plan, PlanningProblem
from gridcharge.command.v1 import command_pb2 as C
from gridcharge.shared.topology import parse_topology

V = 230.0
T0 = datetime(2026, 6, 3, 14, 0, tzinfo=UTC).timestamp()  # window announced 3 h ahead
W_FROM, W_TO = T0 + 3 * 3600, T0 + 7 * 3600

TOPO = parse_topology(
    {
        "nominal_voltage_v": V,
        "nodes": [{"id": "feeder", "limit_a": [40, 40, 40], "safety_margin_pct": 0}],
        "stations": [
            {"id": f"s{i}", "node": "feeder", "max_current_a": 16, "fallback_current_a": 6} for i in range(1, 5)
        ],
    }
)


def accept(alloc: Allocator, cmds: list[ProfileCommand], t: float) -> None:
    for c in cmds:
        alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, t)


def booted(t: float = T0) -> Allocator:
    alloc = Allocator(TOPO, AllocatorConfig())
    for s in TOPO.stations:
        accept(alloc, alloc.station_online(s.id, t), t)
    return alloc


def window(limit_a: float, t: float = T0) -> ExternalLimitWindow:
    lim = (limit_a * V,) * 3
    return ExternalLimitWindow("feeder", "dso", "dso", W_FROM, W_TO, lim, lim, t)


def fallbacks(cmds: list[ProfileCommand]) -> dict[str, ProfileCommand]:
    return {c.station_id: c for c in cmds if c.purpose == "fallback"}


def test_nothing_changes_while_the_fallbacks_fit() -> None:
    alloc = booted()
    alloc.external_limit(window(30.0))  # Σ fallbacks 24 A ≤ 30 A
    res = alloc.plan(datetime.fromtimestamp(T0, UTC))
    assert not fallbacks(res.commands)
    assert all(led.floor_a(W_FROM + 60) == 6 for led in alloc.ledgers.values())


def test_fallbacks_lowered_for_the_window_charging_stations_first() -> None:
    alloc = booted()
    alloc.book.start("s3", 1, "tx1", datetime.fromtimestamp(T0, UTC))
    alloc.external_limit(window(20.0))  # room for 3 of the 4 fallbacks
    res = alloc.plan(datetime.fromtimestamp(T0, UTC))
    fb = fallbacks(res.commands)
    assert set(fb) == {"s4"}  # s3 charges, then s1, s2 by id: s4 is left without room
    periods = fb["s4"].payload.profile.periods
    start = fb["s4"].payload.profile.start_schedule.ToSeconds()
    assert [(round(start + p.start_period_s), p.limit) for p in periods] == [
        (round(T0) - P.BACKDATE_S, 6.0),
        (W_FROM, 0.0),
        (W_TO, 6.0),
    ]
    assert not fb["s4"].payload.profile.HasField("valid_to")  # a fallback never ends
    accept(alloc, res.commands, T0 + 1)
    floors = {sid: led.floor_a(W_FROM + 60) for sid, led in alloc.ledgers.items()}
    assert floors == {"s1": 6, "s2": 6, "s3": 6, "s4": 0}
    assert alloc.ledgers["s4"].floor_a(W_TO + 60) == 6 and alloc.ledgers["s4"].floor_a(T0 + 60) == 6
    # if the allocator died now, every moment of the window stays within the DSO limit
    for t in (W_FROM, W_FROM + 3600, W_TO - 1):
        draw = node_draw_w(TOPO, alloc.worst_case_a(t))["feeder"]
        assert max(draw) <= 20.0 * V + 1e-6
    # a new plan with nothing new sends nothing
    assert not fallbacks(alloc.plan(datetime.fromtimestamp(T0 + 60, UTC)).commands)


def test_window_withdrawn_fallback_raised_again_only_after_the_relax_time() -> None:
    alloc = booted()
    alloc.external_limit(window(10.0))  # room for one
    res = alloc.plan(datetime.fromtimestamp(T0, UTC))
    assert set(fallbacks(res.commands)) == {"s2", "s3", "s4"}
    accept(alloc, res.commands, T0 + 1)
    alloc.external_limit(ExternalLimitWindow("feeder", "dso", "dso", W_FROM, W_FROM, (0.0,) * 3, (0.0,) * 3, T0))
    assert not fallbacks(alloc.plan(datetime.fromtimestamp(T0 + 60, UTC)).commands)  # raising can wait
    later = T0 + FALLBACK_RELAX_S + 5
    res = alloc.plan(datetime.fromtimestamp(later, UTC))
    assert set(fallbacks(res.commands)) == {"s2", "s3", "s4"}
    assert all(
        len(c.payload.profile.periods) == 1 and c.payload.profile.periods[0].limit == 6.0
        for c in fallbacks(res.commands).values()
    )


def test_lowered_fallback_not_yet_accepted_counts_at_the_higher_value() -> None:
    alloc = booted()
    alloc.external_limit(window(10.0))
    res = alloc.plan(datetime.fromtimestamp(T0, UTC))
    assert fallbacks(res.commands)
    # not answered: the old (nominal) fallback may still be the one in force
    assert alloc.ledgers["s4"].floor_max_a(W_FROM, W_FROM + 60) == 6
    assert alloc.ledgers["s4"].worst_case_a(W_FROM + 60) == 6


def test_stations_with_few_periods_get_a_schedule_that_never_raises() -> None:
    alloc = booted()
    alloc.capabilities("s4", (), 2)  # e.g. a station that keeps 2 periods only
    alloc.external_limit(window(20.0))
    res = alloc.plan(datetime.fromtimestamp(T0, UTC))
    periods = fallbacks(res.commands)["s4"].payload.profile.periods
    assert [p.limit for p in periods] == [6.0, 0.0]  # folded at the lower value: stays down after the window


def test_ledger_floor_follows_the_installed_schedule() -> None:
    led = StationLedger("cs", fallback_a=6, hw_max_a=32, online=True)
    led.sent(
        Sent(
            "fb",
            FALLBACK_KEY,
            C.PROFILE_PURPOSE_STATION_MAX,
            0,
            6,
            math.inf,
            0,
            ((0.0, 6.0), (100.0, 0.0), (200.0, 6.0)),
        )
    )
    assert led.floor_a(50) == 32  # not answered yet: unknown, hardware max
    led.result("fb", C.COMMAND_OUTCOME_ACCEPTED, 1)
    assert (led.floor_a(50), led.floor_a(150), led.floor_a(250), led.floor_a()) == (6, 0, 6, 6)
    assert led.floor_min_a(50, 150) == 0 and led.floor_max_a(120, 180) == 0 and led.floor_max_a(120, 220) == 6
    # the moments a budget check looks at: the step at 200 s lies inside (150, 250), where the floor is back at 6 A
    assert led.change_times(150, 250) == [200.0]
    assert led.worst_case_a(150) == 0 and max(led.worst_case_a(t) for t in [150, *led.change_times(150, 250)]) == 6


def test_window_starting_inside_a_slot_binds_the_slot() -> None:
    ext = window(20.0)
    cap = node_capacity(TOPO, {}, [ext], T0, [W_FROM - 600, W_FROM + 300], 900.0)
    assert cap.w["feeder"][0, 0] == 20.0 * V and cap.w["feeder"][0, 1] == 20.0 * V
    cap = node_capacity(TOPO, {}, [ext], T0, [W_FROM - 600], 0.0)  # point value: before the window
    assert cap.w["feeder"][0, 0] == 40.0 * V


def settle(alloc: Allocator, t: float, rounds: int = 4) -> list[ProfileCommand]:
    sent: list[ProfileCommand] = []
    for _ in range(rounds):
        cmds = alloc.plan(datetime.fromtimestamp(t, UTC)).commands
        accept(alloc, cmds, t)
        sent += cmds
    return sent


SMALL = parse_topology(
    {
        "nominal_voltage_v": V,
        "nodes": [{"id": "site", "limit_a": [20, 20, 20], "safety_margin_pct": 0}],
        "stations": [
            {"id": f"c{i}", "node": "site", "max_current_a": 16, "fallback_current_a": 6} for i in range(1, 4)
        ],
    }
)


def small(release: bool) -> Allocator:
    alloc = Allocator(SMALL, AllocatorConfig(release_idle_fallbacks=release))
    for s in SMALL.stations:
        accept(alloc, alloc.station_online(s.id, T0), T0)
    return alloc


def test_idle_fallbacks_released_to_a_car_held_back_and_restored_when_a_car_arrives() -> None:
    kept = small(release=False)
    kept.book.start("c1", 1, "tx1", datetime.fromtimestamp(T0, UTC))
    settle(kept, T0)
    assert kept.grant_a["c1/1"] == 8.0  # 20 A less the two idle fallbacks
    alloc = small(release=True)
    alloc.book.start("c1", 1, "tx1", datetime.fromtimestamp(T0, UTC))
    sent = settle(alloc, T0)
    assert alloc.grant_a["c1/1"] == 8.0  # the second raise waits a minute (write budget) ...
    sent += settle(alloc, T0 + 61)
    assert alloc.grant_a["c1/1"] == 16.0  # ... then the idle floors went to the car
    assert {c.station_id for c in fallbacks(sent).values()} == {"c2", "c3"}
    assert (
        alloc.ledgers["c2"].floor_a(T0) == 0
        and max(node_draw_w(SMALL, alloc.worst_case_a(T0))["site"]) <= 20 * V + 1e-6
    )
    # a car arrives at c2: its fallback comes back at once (no relax delay), and the budget still holds
    alloc.book.start("c2", 1, "tx2", datetime.fromtimestamp(T0 + 120, UTC))
    sent = settle(alloc, T0 + 120)
    assert "c2" in fallbacks(sent) and alloc.ledgers["c2"].floor_a(T0 + 120) == 6
    assert max(node_draw_w(SMALL, alloc.worst_case_a(T0 + 120))["site"]) <= 20 * V + 1e-6
    assert alloc.grant_a["c2/1"] >= 6.0


def test_a_car_that_is_done_releases_its_floor_like_an_idle_station() -> None:
    alloc = small(release=True)
    start = datetime.fromtimestamp(T0, UTC)
    for sid, tx in (("c1", "tx1"), ("c2", "tx2")):
        alloc.book.start(sid, 1, tx, start, meter_start_wh=0)
    alloc.book.needs("c2", 1, None, 1000, 0, 0, 0)  # c2 needs 1 kWh and has had it
    alloc.book.meter("c2", 1, "tx2", start, 1000, 0.0, None, granted_a=None)
    sent = settle(alloc, T0) + settle(alloc, T0 + 61)
    assert {c.station_id for c in fallbacks(sent).values()} == {"c2", "c3"}
    assert alloc.grant_a["c1/1"] == 16.0


def test_after_a_restart_an_installed_fallback_of_unknown_shape_is_replaced_when_it_must_go_lower() -> None:
    alloc = Allocator(TOPO, AllocatorConfig())
    for led in alloc.ledgers.values():  # what the store says after a restart: installed, shape unknown
        led.fallback_installed, led.online = True, True
    assert not fallbacks(alloc.plan(datetime.fromtimestamp(T0, UTC)).commands)
    alloc.external_limit(window(20.0))
    assert set(fallbacks(alloc.plan(datetime.fromtimestamp(T0 + 60, UTC)).commands)) == {"s4"}


class GreedyPlanner:
    def plan(self, problem: PlanningProblem) -> Plan:
        cur = np.array([[s.max_current_a] * problem.slots.count for s in problem.sessions])
        return Plan(
            problem.slots,
            [s.session_id for s in problem.sessions],
            cur,
            cur * V,
            [(0,)] * len(problem.sessions),
            {},
            {},
            "greedy",
            0.0,
            0.0,
        )


def test_a_fallback_rising_after_a_window_does_not_keep_a_lease_during_it() -> None:
    """Found by the state machine: a 1-min window at 0 W; the fallback drops to 0 A for its slot and rises
    back to 6 A at the next slot start, inside the lease's lifetime. The lease must not stay at 6 A because
    the floor will be 6 A later: during the window it overrides the 0 A fallback (at most 0 A now)."""
    topo = parse_topology(
        {
            "nominal_voltage_v": V,
            "nodes": [{"id": "site", "limit_a": [63, 63, 63], "safety_margin_pct": 0}],
            "stations": [{"id": "a1", "node": "site", "max_current_a": 32, "fallback_current_a": 6}],
        }
    )
    # a planner that asks for the most in every slot: the budget alone must hold (as in the state machine)
    alloc = Allocator(topo, AllocatorConfig(horizon_slots=4), GreedyPlanner())
    t = T0 + 330
    accept(alloc, alloc.station_online("a1", t), t)
    alloc.book.start("a1", 1, "tx1", datetime.fromtimestamp(t, UTC))
    accept(alloc, alloc.plan(datetime.fromtimestamp(t, UTC)).commands, t)
    assert alloc.ledgers["a1"].worst_case_a(t) >= 6
    alloc.external_limit(ExternalLimitWindow("site", "dso", "dso", t, t + 60, (0.0,) * 3, (0.0,) * 3, t))
    for _ in range(3):
        accept(alloc, alloc.plan(datetime.fromtimestamp(t, UTC)).commands, t)
    led = alloc.ledgers["a1"]
    assert led.floor_max_a(t, t + 600) == 6  # the fallback does come back within the lease
    assert led.worst_case_a(t) == 0  # ... but now the station may draw nothing
    assert alloc.grant_a["a1/1"] == 0


def test_fit_caps_holds_at_every_moment() -> None:
    """Two moments: now (no room) and later (room, floor back at 6 A). A scalar fit (lowest capacity,
    highest floor) would keep 6 A as 'free'; per moment the cap must go to 0 now."""
    cap = {"feeder": np.array([[0.0, 40 * V]] * 3)}
    wc: dict[str, float | np.ndarray] = {"s1": np.array([6.0, 6.0]), "s2": 0.0, "s3": 0.0, "s4": 0.0}
    floors = {"s1": np.array([0.0, 6.0])}
    ok = fit_caps(TOPO, cap, wc, {"s1": 16.0}, ["s1"], floor_a=floors)
    assert ok["s1"] == 0.0
    # a raise fits the tightest moment: 10 A of room now, 40 A later
    cap2 = {"feeder": np.array([[10 * V, 40 * V]] * 3)}
    ok = fit_caps(
        TOPO, cap2, {"s1": np.array([0.0, 6.0]), "s2": 0.0, "s3": 0.0, "s4": 0.0}, {"s1": 16.0}, ["s1"], floor_a=floors
    )
    assert ok["s1"] == 10.0
