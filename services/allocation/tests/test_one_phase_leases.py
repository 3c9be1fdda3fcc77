"""Single-phase cars at three-phase stations: the lease in W on one phase and the per-phase budget.

A station cap in A binds every phase, so the budget reserved it on all three for a car that draws on one
(the office and residential demos lost their last percent so). A cap in W bounds the station's total power,
which a single-phase car can draw only on L1 (IEC 62196 type 2 loads L1 first): on L1, L2, L3 at most
P/V, P/2V, P/3V, at a voltage down to `low_voltage` × nominal. These tests pin each piece: the weights a
payload implies, the ledger's per-phase worst case, the fit, the planner's weighted rows, the cycle that
chooses the unit and the limiter that never raises a phase. The state machine in test_stateful.py checks
the whole with random failures.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from gridcharge.allocation.core import profiles as P
from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig, ProfileCommand
from gridcharge.allocation.core.budget import fit_caps, node_draw_w, violations
from gridcharge.allocation.core.failsafe import LEASE_KEY, Sent, StationLedger
from gridcharge.allocation.core.model import Evse, NodeCapacity, PlannerConfig, PlanningProblem, Session, SlotGrid
from gridcharge.allocation.core.planner import LpPlanner
from gridcharge.command.v1 import command_pb2 as C
from gridcharge.common.v1 import common_pb2
from gridcharge.shared.topology import parse_topology

V = 230.0
LOW = 0.9
T0 = datetime(2026, 6, 3, 8, 1, tzinfo=UTC)
A, W = common_pb2.RATE_UNIT_A, common_pb2.RATE_UNIT_W


def lease(limit_a: float, t: P.StationProfileTarget) -> C.SetChargingProfile:
    return P.station_lease_profile(limit_a, T0, 1200.0, t)


# ---------------------------------------------------------------- what a payload lets a station draw per phase
def test_an_a_limit_counts_alike_on_every_phase() -> None:
    t = P.StationProfileTarget(A, 3, V)
    assert P.phase_weights(lease(16, t), t, 3, LOW) == ()
    assert P.profile_limit_a(lease(16, t), t) == 16


def test_a_w_limit_on_one_phase_counts_all_of_it_on_l1_half_on_l2_a_third_on_l3() -> None:
    t = P.StationProfileTarget(W, 1, V)
    p = lease(16, t)
    assert p.profile.periods[0].limit == pytest.approx(16 * V)
    assert p.profile.periods[0].number_phases == 1
    # read back with the station's three-phase target: the period's numberPhases wins
    assert P.profile_limit_a(p, P.StationProfileTarget(W, 3, V)) == pytest.approx(16)
    assert P.phase_weights(p, t, 3, LOW) == pytest.approx((1 / 0.9, 1 / 1.8, 1 / 2.7))


def test_a_three_phase_w_limit_may_go_to_one_phase_three_times_over() -> None:
    """A W-only station's lease (W over three phases): a single-phase car may take all of it on L1."""
    t = P.StationProfileTarget(W, 3, V)
    p = lease(10, t)
    assert P.profile_limit_a(p, t) == pytest.approx(10)
    assert P.phase_weights(p, t, 3, LOW) == pytest.approx((3 / 0.9, 3 / 1.8, 3 / 2.7))


# ---------------------------------------------------------------- the ledger: worst case per station phase
def test_the_ledger_counts_a_w_lease_per_phase_and_the_floor_once_it_lapsed() -> None:
    led = StationLedger("cs", fallback_a=6, hw_max_a=32, online=True, fallback_installed=True, skew_s=30)
    now = T0.timestamp()
    led.sent(
        Sent("l1", LEASE_KEY, C.PROFILE_PURPOSE_STATION_MAX, 0, 18.0, now + 1200, now, (), (1 / 0.9, 1 / 1.8, 1 / 2.7))
    )
    assert led.result("l1", C.COMMAND_OUTCOME_ACCEPTED, now) is not None
    assert led.worst_case_ph(now) == pytest.approx([20.0, 10.0, 6.666667])
    assert led.worst_case_a(now) == pytest.approx(20.0)
    # its end ± skew: either the lease or the floor, the higher per phase
    assert led.worst_case_ph(now + 1200) == pytest.approx([20.0, 10.0, 6.666667])
    assert led.worst_case_ph(now + 1190 - 30) == pytest.approx([20.0, 10.0, 6.666667])
    assert led.worst_case_ph(now + 1200 + 30) == [6.0, 6.0, 6.0]
    # never above the hardware
    led.sent(
        Sent(
            "l2",
            LEASE_KEY,
            C.PROFILE_PURPOSE_STATION_MAX,
            0,
            32.0,
            now + 1200,
            now + 1,
            (),
            (1 / 0.9, 1 / 1.8, 1 / 2.7),
        )
    )
    assert led.worst_case_ph(now + 2) == pytest.approx([32.0, 32 / 1.8, 32 / 2.7])


def test_a_lower_w_lease_in_flight_keeps_the_old_a_lease_counted_on_every_phase() -> None:
    led = StationLedger("cs", fallback_a=6, hw_max_a=32, online=True, fallback_installed=True, skew_s=30)
    now = T0.timestamp()
    led.sent(Sent("a", LEASE_KEY, C.PROFILE_PURPOSE_STATION_MAX, 0, 16.0, now + 1200, now))
    led.result("a", C.COMMAND_OUTCOME_ACCEPTED, now)
    led.sent(
        Sent(
            "w", LEASE_KEY, C.PROFILE_PURPOSE_STATION_MAX, 0, 16.0, now + 1200, now + 1, (), (1 / 0.9, 1 / 1.8, 1 / 2.7)
        )
    )
    # either may be in force: L1 at the W lease's 17.8 A, L2 and L3 at the A lease's 16 A
    assert led.worst_case_ph(now + 2) == pytest.approx([16 / 0.9, 16.0, 16.0])
    # once the W lease is accepted (settled), the A lease no longer counts
    assert led.settled_worst_case_ph(now + 2) == pytest.approx([16 / 0.9, 16 / 1.8, 16 / 2.7])


# ---------------------------------------------------------------- the fit and the draw per phase
def topo(
    one_phase_cars: int, three_phase_cars: int, limit_a: float, rot: bool = False, three_max_a: float = 32
) -> object:
    maps = [["L1", "L2", "L3"], ["L2", "L3", "L1"], ["L3", "L1", "L2"]]
    n = one_phase_cars + three_phase_cars
    return parse_topology(
        {
            "nominal_voltage_v": V,
            "nodes": [{"id": "tx", "limit_a": [limit_a] * 3, "metered": False}],
            "stations": [
                {
                    "id": f"s{i:02d}",
                    "node": "tx",
                    "max_current_a": 32 if i < one_phase_cars else three_max_a,
                    "fallback_current_a": 0,
                    "phase_map": maps[i % 3] if rot else maps[0],
                }
                for i in range(n)
            ],
        }
    )


def test_node_draw_counts_per_phase_values_on_the_stations_wired_phases() -> None:
    tp = topo(0, 2, 100, rot=True)  # s00 L1 L2 L3, s01 L2 L3 L1
    d = node_draw_w(tp, {"s00": [10.0, 5.0, 2.0], "s01": 4.0})  # type: ignore[arg-type]
    assert d["tx"] == pytest.approx(np.array([10 + 4, 5 + 4, 2 + 4]) * V)
    d = node_draw_w(tp, {"s00": 1.0, "s01": [10.0, 5.0, 2.0]})  # type: ignore[arg-type]
    assert d["tx"] == pytest.approx(np.array([1 + 2, 1 + 10, 1 + 5]) * V)


def test_the_fit_grants_a_w_lease_what_the_phases_have_room_for() -> None:
    tp = topo(0, 2, 40)
    cap = {"tx": np.array([40.0, 40.0, 40.0]) * V}
    wc = {"s00": 0.0, "s01": np.array([[30.0], [0.0], [0.0]])}  # s01 holds 30 A on L1 only
    one = (1 / 0.9, 1 / 1.8, 1 / 2.7)
    got = fit_caps(tp, cap, wc, {"s00": 32.0}, ["s00"], lease_weights={"s00": one})  # type: ignore[arg-type]
    assert got["s00"] == pytest.approx(10 * 0.9)  # L1 has 10 A left: 9 A × 1/0.9
    got = fit_caps(tp, cap, wc, {"s00": 32.0}, ["s00"])  # type: ignore[arg-type]
    assert got["s00"] == pytest.approx(10.0)
    # L1 free, L2 and L3 nearly full: the W lease may go far higher than an A lease
    wc = {"s00": 0.0, "s01": np.array([[0.0], [30.0], [30.0]])}
    # (L2 binds: 10 A × 1.8)
    assert fit_caps(tp, cap, wc, {"s00": 32.0}, ["s00"], lease_weights={"s00": one})["s00"] == pytest.approx(18.0)  # type: ignore[arg-type]
    assert fit_caps(tp, cap, wc, {"s00": 32.0}, ["s00"])["s00"] == pytest.approx(10.0)  # type: ignore[arg-type]


def test_a_lowering_over_capacity_never_raises_another_phase() -> None:
    tp = topo(0, 1, 40)
    cap = {"tx": np.array([40.0, 12.0, 40.0]) * V}  # L2 dropped
    wc = {"s00": np.array([[20.0], [20.0], [20.0]])}  # an A lease at 20 A
    one = (1 / 0.9, 1 / 1.8, 1 / 2.7)
    got = fit_caps(tp, cap, wc, {"s00": 20.0}, ["s00"], keep={"s00"}, lease_weights={"s00": one})  # type: ignore[arg-type]
    # L2 needs ≤ 12 A: 21.6 A in W would do that but count 24 A on L1, more than the 20 A it holds there
    assert got["s00"] * one[0] <= 20.0 + 1e-9
    assert got["s00"] * one[1] <= 12.0 + 1e-9


# ---------------------------------------------------------------- the planner's weighted rows
def test_the_planner_counts_a_weighted_car_on_every_phase_as_its_weights_say() -> None:
    T = 4
    one = (1 / 0.9, 1 / 1.8, 1 / 2.7)
    problem = PlanningProblem(
        slots=SlotGrid(T0, T, 900.0),
        nodes=[NodeCapacity.from_amps("tx", [20.0, 20.0, 20.0], T, V)],
        evses=[
            Evse("e1", ("tx",), (0, 1, 2), max_current_a=32, load_weights=one),
            Evse("e3", ("tx",), (0, 1, 2), max_current_a=32),
        ],
        sessions=[
            Session("one", "e1", 50_000, 0, T, 6, 32, 1, V),
            Session("three", "e3", 50_000, 0, T, 6, 32, 3, V),
        ],
        config=PlannerConfig(time_limit_s=10.0),
    )
    plan = LpPlanner().plan(problem)
    x1, x3 = plan.current_a[0], plan.current_a[1]
    # every phase within its 20 A as the weights count it
    assert np.all(x1 * one[0] + x3 <= 20.0 + 1e-6)
    assert np.all(x1 * one[1] + x3 <= 20.0 + 1e-6)
    # the single-phase car's energy is on one phase: x · V per hour
    assert plan.power_w[0] == pytest.approx(x1 * V)
    # and together they use L1 fully (no three-fold reservation)
    assert np.all(x1 * one[0] + x3 >= 20.0 - 0.2 - 1e-6)


# ---------------------------------------------------------------- the cycle: which unit, and what it gives
class Site:
    """One-EVSE three-phase stations on one node; cars on one or three phases; every command accepted."""

    def __init__(self, tp: object, units: tuple[int, ...], one_phase: set[str]) -> None:
        self.alloc = Allocator(tp, AllocatorConfig())  # type: ignore[arg-type]
        self.t = T0.timestamp()
        self.sent: list[ProfileCommand] = []
        for sid in self.alloc.ledgers:
            self.alloc.capabilities(sid, units, 24)
            self.deliver(self.alloc.station_online(sid, self.t))
            self.alloc.book.start(sid, 1, f"tx-{sid}", self.at())
            self.alloc.book.set_preferences(f"{sid}/1/tx-{sid}", energy_wh=60_000)
            if sid in one_phase:
                s = self.alloc.book.find(sid, 1, f"tx-{sid}")
                assert s is not None
                s.phases = 1  # as a meter sample on one phase twice in a row would set it

    def at(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def deliver(self, cmds: list[ProfileCommand]) -> None:
        for c in cmds:
            self.sent.append(c)
            self.alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, self.t)

    def cycles(self, n: int) -> None:
        for _ in range(n):
            self.t += 60.0
            self.deliver(self.alloc.plan(self.at()).commands)

    def check_budget(self) -> None:
        cap = self.alloc.capacity_now(self.t)
        assert violations(self.alloc.topology, cap, self.alloc.worst_case_ph(self.t)) == []


def power_kw(site: Site, one_phase: set[str]) -> float:
    """What the cars draw now at their grants (kW): a single-phase car on one phase, the others on three."""
    return sum(a * V * (1 if k.split("/")[0] in one_phase else 3) for k, a in site.alloc.grant_a.items()) / 1000


def test_single_phase_cars_get_w_leases_on_one_phase_and_more_power_than_in_a() -> None:
    # one single-phase car on each grid phase (rotated stations) and a 16-A three-phase car
    tp = topo(3, 1, 40, rot=True, three_max_a=16)
    one = {"s00", "s01", "s02"}
    w_site = Site(tp, (A, W), one)
    w_site.cycles(3)
    w_site.check_budget()
    leases = [c for c in w_site.sent if c.purpose == "station_lease"]
    by_station = {c.station_id: c.payload.profile for c in leases}
    for sid in one:
        assert by_station[sid].rate_unit == W
        assert by_station[sid].periods[0].number_phases == 1
    assert by_station["s03"].rate_unit == A  # the three-phase car: per phase in A as before

    a_site = Site(tp, (A,), one)  # a station that takes only A: the cap binds every phase
    a_site.cycles(3)
    a_site.check_budget()
    assert all(c.payload.profile.rate_unit == A for c in a_site.sent)
    # 38 A per phase (5 % margin): in A each single-phase car reserves its grant on every phase, in W one
    # counts 1/0.9 + 1/1.8 + 1/2.7 ≈ 2.04 times its grant over the three phases, not 3: all four cars charge
    assert power_kw(w_site, one) > 1.5 * power_kw(a_site, one)
    assert all(w_site.alloc.grant_a[f"{sid}/1"] >= 10 for sid in [*one, "s03"])


def test_the_w_lease_can_be_switched_off() -> None:
    tp = topo(1, 0, 40)
    site = Site(tp, (A, W), {"s00"})
    site.alloc.cfg = AllocatorConfig(one_phase_w_leases=False)
    site.cycles(2)
    assert all(c.payload.profile.rate_unit == A for c in site.sent)


def test_the_limiter_never_raises_a_phase_when_it_cuts_a_station_that_holds_an_a_lease() -> None:
    tp = topo(1, 0, 25)
    site = Site(tp, (A, W), set())
    site.cycles(2)  # the car is three-phase: an A lease
    held = site.alloc.ledgers["s00"].held_a(site.t)
    assert held > 20
    s = site.alloc.book.find("s00", 1, "tx-s00")
    assert s is not None
    s.phases = 1
    site.alloc.issuer.one_phase = {"s00"}  # as the next cycle would decide
    site.t += 1.0
    # the node a little over its limit (load + 2 % of it): a small cut, less than the 10 % a W lease adds on L1
    load = ((25 - 0.4) * V,) * 3
    site.alloc.node_load("tx", load, (0.0,) * 3, site.t)
    cmds = site.alloc.limit("tx", site.at())
    assert cmds, "the limiter cuts"
    before = [held] * 3
    site.deliver(cmds)
    after = site.alloc.ledgers["s00"].worst_case_ph(site.t)
    assert all(a <= b + 1e-9 for a, b in zip(after, before, strict=True)), (after, before)


def test_a_restart_restores_a_w_lease_per_phase() -> None:
    """The lease record in the store keeps the per-phase worst case: after a restart a W lease must not count
    as its A equivalent on L1 (16 A where the station may draw 17.8 A)."""
    tp = topo(1, 0, 40)
    site = Site(tp, (A, W), {"s00"})
    site.cycles(2)
    rec = site.alloc.lease_record("s00", site.t)
    assert rec is not None
    cap_a, until, phase_a = rec
    assert phase_a == pytest.approx([min(32.0, cap_a / 0.9), cap_a / 1.8, cap_a / 2.7])
    fresh = Allocator(tp, AllocatorConfig())  # type: ignore[arg-type]
    fresh.ledgers["s00"].fallback_installed = True  # (restored from the store too: its 0-A fallback)
    assert fresh.restore_lease("s00", cap_a, until, site.t, phase_a)
    assert fresh.ledgers["s00"].worst_case_ph(site.t) == pytest.approx(phase_a)
    # a record without phases (an older version) counts the cap on every phase
    older = Allocator(tp, AllocatorConfig())  # type: ignore[arg-type]
    older.ledgers["s00"].fallback_installed = True
    assert older.restore_lease("s00", cap_a, until, site.t)
    assert older.ledgers["s00"].worst_case_ph(site.t) == pytest.approx([cap_a] * 3)


def test_a_settled_w_lease_is_not_taken_for_a_lowering_on_its_way() -> None:
    """A W lease counts more than its cap on L1 by design; that is not room being freed. Taken for it, every
    renewal under the node waited for a lowering that never came."""
    from gridcharge.allocation.core.cycle import renewals_waiting_for_room

    tp = topo(1, 1, 40)
    site = Site(tp, (A, W), {"s00"})
    site.cycles(3)
    led = site.alloc.ledgers["s00"]
    assert not led.pending and not led.uncertain
    assert led.held_ph(site.t) == pytest.approx(led.worst_case_ph(site.t))
    assert led.worst_case_a(site.t) > led.held_a(site.t) + 0.5  # the W lease's L1
    held = site.alloc.ledgers["s01"].held_a(site.t)
    waiting = renewals_waiting_for_room(
        site.alloc, site.t, {"s00": led.held_a(site.t), "s01": held + 5}, {"s01": held}, {"s01"}
    )
    assert waiting == set()
