"""Fast limiter: smallest lowering by priority (giving back is the planner's job, after the raise hold)."""

from __future__ import annotations

from gridcharge.allocation.core.limiter import Connector, lower

V = 230.0


def test_nothing_to_do_within_limit() -> None:
    c = [Connector("a", (0, 1, 2), 16)]
    assert lower([10 * V] * 3, [40 * V] * 3, 0.0, V, c) == {}


def test_lowers_lowest_priority_first_and_only_as_much_as_needed() -> None:
    conns = [Connector("vip", (0, 1, 2), 32, priority=5), Connector("std", (0, 1, 2), 32, priority=1)]
    # 70 A measured on a 60 A limit: 10 A too much
    out = lower([70 * V] * 3, [60 * V] * 3, 0.0, V, conns)
    assert out == {"std": 22.0}


def test_below_minimum_goes_to_zero_and_continues() -> None:
    conns = [Connector("a", (0,), 8, priority=1), Connector("b", (0,), 20, priority=2)]
    out = lower([38 * V, 0, 0], [30 * V, 1e9, 1e9], 0.0, V, conns)
    # 8 A over: "a" alone would go to 0 (8 A) which is enough
    assert out == {"a": 0.0}


def test_only_connectors_on_the_overloaded_phase() -> None:
    conns = [Connector("l1", (0,), 16), Connector("l2", (1,), 16)]
    out = lower([40 * V, 10 * V, 10 * V], [32 * V] * 3, 0.0, V, conns)
    assert set(out) == {"l1"} and out["l1"] == 8.0


def test_lowering_counts_what_is_actually_drawn() -> None:
    # granted 32 but only drawing 10: lowering the grant to 22 would free nothing
    conns = [Connector("taper", (0,), 32, drawing_a=10), Connector("full", (0,), 20, drawing_a=20)]
    out = lower([35 * V, 0, 0], [30 * V, 1e9, 1e9], 0.0, V, conns)
    assert sum((c.granted_a if c.key not in out else out[c.key]) for c in conns) <= 52 - 5 + 1e-9
    assert out.get("taper", 32) <= 5.0 or out.get("full", 20) <= 15.0


def test_one_priority_is_capped_at_a_common_level_not_a_few_cars_stopped() -> None:
    conns = [Connector(f"c{i}", (0, 1, 2), 10) for i in range(10)]
    out = lower([120 * V] * 3, [100 * V] * 3, 0.0, V, conns)  # 20 A too much on 100 A of cars
    assert out == {f"c{i}": 8.0 for i in range(10)}
    uneven = [Connector("big", (0,), 20), Connector("small", (0,), 8)]
    assert lower([28 * V, 0, 0], [22 * V, 1e9, 1e9], 0.0, V, uneven) == {"big": 14.0}  # the level is 14 A


def test_cuts_to_the_target_margin_once_triggered() -> None:
    conns = [Connector("a", (0, 1, 2), 20)]
    # 97.5 A on 100 A: no trigger at a 2 A margin, though above the 5 A target ...
    assert lower([97.5 * V] * 3, [100 * V] * 3, 2 * V, V, conns, 5 * V) == {}
    # ... 99.5 A triggers it, and the cut goes to the 5 A target margin: 94.5 A → 15.5 A for "a"
    out = lower([99.5 * V] * 3, [100 * V] * 3, 1 * V, V, conns, 5 * V)
    assert out == {"a": 15.5}
