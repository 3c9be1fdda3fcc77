"""The fast limiter and the re-plan after it: one cut per station for an overload, the plan that follows
stays within the cut (no second round of lowerings), and a regular cycle re-optimises once the hold ends."""

from __future__ import annotations

from datetime import UTC, datetime

from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig, ProfileCommand
from gridcharge.command.v1 import command_pb2 as C
from gridcharge.shared.topology import parse_topology

V = 230.0
T0 = datetime(2026, 6, 3, 12, 0, tzinfo=UTC).timestamp()
TOPO = parse_topology(
    {
        "nominal_voltage_v": V,
        "nodes": [{"id": "tx", "limit_a": [100, 100, 100], "metered": True, "safety_margin_pct": 5}],
        "stations": [{"id": f"s{i}", "node": "tx", "max_current_a": 16, "fallback_current_a": 6} for i in range(8)],
    }
)


def accept(alloc: Allocator, cmds: list[ProfileCommand], t: float) -> None:
    for c in cmds:
        alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, t)


def tx_cmds(cmds: list[ProfileCommand]) -> dict[str, float]:
    return {c.station_id: c.payload.profile.periods[0].limit for c in cmds if c.purpose == "station_lease"}


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def test_overload_one_cut_per_station_and_the_replan_keeps_it() -> None:
    alloc = Allocator(TOPO, AllocatorConfig(release_idle_fallbacks=False))
    for s in TOPO.stations:
        accept(alloc, alloc.station_online(s.id, T0), T0)
        alloc.book.start(s.id, 1, f"t-{s.id}", at(T0))
    alloc.node_load("tx", (0.0,) * 3, (0.0,) * 3, T0)
    for k in range(4):
        accept(alloc, alloc.plan(at(T0 + k)).commands, T0 + k)
    assert 90 <= sum(alloc.grant_a.values()) <= 95 + 1e-6  # 95 A (5 % margin) shared by 8 cars
    # a reading: 30 A of base load appeared (~95 A of cars + 30 A on a 100 A transformer)
    cars = sum(alloc.grant_a.values())
    t1 = T0 + 10
    alloc.node_load("tx", ((cars + 30) * V,) * 3, (30 * V,) * 3, t1)
    cut = alloc.limit("tx", at(t1))
    accept(alloc, cut, t1)
    lowered = tx_cmds(cut)
    level = set(lowered.values())
    assert len(level) == 1 and len(lowered) >= 4  # every car above it capped at one level
    assert all(a <= max(level) for a in alloc.grant_a.values())
    assert sum(lowered.values()) <= 95 - 30 + 1e-6  # down to the planner's 5 % margin
    # the re-plan a second later sees the same base load: nothing more to lower
    again = alloc.plan(at(t1 + 1))
    assert not {sid: a for sid, a in tx_cmds(again.commands).items() if a < lowered[sid] - 1e-9}
    accept(alloc, again.commands, t1 + 1)
    # after the hold a regular cycle plans freely again (and stays within the capacity)
    late = T0 + 10 + AllocatorConfig().limiter_hold_s + 1
    alloc.node_load("tx", ((sum(alloc.grant_a.values()) + 30) * V,) * 3, (30 * V,) * 3, late)
    alloc.plan(at(late))
    assert not alloc.limiter_a
    assert sum(alloc.grant_a.values()) <= 95 - 30 + 1e-6


IDLE_TOPO = parse_topology(
    {
        "nominal_voltage_v": V,
        "nodes": [{"id": "tx", "limit_a": [100, 100, 100], "metered": True, "safety_margin_pct": 5}],
        "stations": [{"id": f"s{i}", "node": "tx", "max_current_a": 32, "fallback_current_a": 6} for i in range(8)],
    }
)


def half_charging(alloc: Allocator) -> list[str]:
    """IDLE_TOPO's 8 stations online, s0-s3 charging, four planning cycles accepted: the charging ones."""
    for s in IDLE_TOPO.stations:
        accept(alloc, alloc.station_online(s.id, T0), T0)
    charging = [f"s{i}" for i in range(4)]
    for sid in charging:
        alloc.book.start(sid, 1, f"t-{sid}", at(T0))
    alloc.node_load("tx", (0.0,) * 3, (0.0,) * 3, T0)
    for k in range(4):
        accept(alloc, alloc.plan(at(T0 + k)).commands, T0 + k)
    return charging


def test_the_limiter_cut_already_fits_the_worst_case_so_the_replan_has_nothing_to_cut() -> None:
    """Idle stations keep their fallback (6 A each, what they may draw whatever happens) and draw nothing, so
    the measured load is below the worst case: a cut of only the measured excess would leave Σ worst case
    over the capacity and the re-plan would lower again a second later. The limiter's one cut covers both."""
    alloc = Allocator(IDLE_TOPO, AllocatorConfig(release_idle_fallbacks=False))
    half_charging(alloc)
    cars = sum(alloc.grant_a.values())
    assert cars >= 65  # the cars share what the idle stations' 24 A leave of 95 A
    t1 = T0 + 10
    alloc.node_load("tx", ((cars + 30) * V,) * 3, (30 * V,) * 3, t1)
    cut = alloc.limit("tx", at(t1))
    accept(alloc, cut, t1)
    lowered = tx_cmds(cut)
    assert lowered
    worst = sum(alloc.ledgers[s.id].worst_case_a(t1 + 1) for s in IDLE_TOPO.stations)
    assert worst + 30 <= 95 + 1e-6  # the fail-safe budget holds after the one cut
    again = alloc.plan(at(t1 + 1))
    assert not {sid: a for sid, a in tx_cmds(again.commands).items() if a < lowered.get(sid, 99.0) - 1e-9}
    assert all(c.reason != "safety" for c in again.commands)


def fallback_cmds(cmds: list[ProfileCommand]) -> dict[str, float]:
    return {c.station_id: c.payload.profile.periods[0].limit for c in cmds if c.purpose == "fallback"}


def test_the_limiter_lowers_the_fallbacks_the_reading_makes_too_high_in_the_same_action() -> None:
    """Base load jumps under a node whose charging stations have 6 A fallbacks (what they draw if the allocator
    died): Σ fallbacks + base must fit the node at once, not at the next cycle. The limiter sends those fallback
    lowerings with its cut, so the cycle a second later has none left."""
    alloc = Allocator(IDLE_TOPO, AllocatorConfig())
    charging = half_charging(alloc)
    assert not any(a < 6 for a in fallback_cmds(alloc.plan(at(T0 + 5)).commands).values())
    cars = sum(alloc.grant_a.values())
    t1 = T0 + 10
    # the cars hold each other back: the idle stations were released to 0 A, the charging ones keep 6 A
    assert {sid: alloc.fallbacks.value_now(sid, T0 + 5) for sid in ("s0", "s7")} == {"s0": 6.0, "s7": 0.0}
    alloc.node_load("tx", ((cars + 80) * V,) * 3, (80 * V,) * 3, t1)  # 80 A of base: 15 A left of 95 A
    cut = alloc.limit("tx", at(t1))
    lowered_fb = fallback_cmds(cut)
    assert lowered_fb and all(c.reason == "limiter" for c in cut if c.purpose == "fallback")
    assert set(lowered_fb) <= set(charging)  # 4 × 6 A no longer fit if the allocator died now
    assert sum(alloc.fallbacks.value_now(s.id, t1) for s in IDLE_TOPO.stations) <= 15 + 1e-6
    accept(alloc, cut, t1)
    again = alloc.plan(at(t1 + 1))
    assert not fallback_cmds(again.commands), again.commands
    lowered = tx_cmds(cut)
    assert not {sid: a for sid, a in tx_cmds(again.commands).items() if a < lowered.get(sid, 99.0) - 1e-9}
