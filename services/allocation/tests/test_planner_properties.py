"""Property test: random trees and sessions → the rounded plan never breaks a limit."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
from gridcharge.allocation.core import (
    Evse,
    LpPlanner,
    NodeCapacity,
    PlannerConfig,
    PlanningProblem,
    Session,
    SlotGrid,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PHASE_MAPS = [(0,), (1,), (2,), (0, 1), (1, 2), (0, 1, 2), (1, 2, 0), (2, 0, 1)]


@st.composite
def problems(draw: st.DrawFn) -> PlanningProblem:
    T = draw(st.integers(2, 12))
    n_nodes = draw(st.integers(1, 5))
    nodes: list[NodeCapacity] = []
    parents: dict[str, str | None] = {}
    for i in range(n_nodes):
        parent = None if i == 0 else f"n{draw(st.integers(0, i - 1))}"
        parents[f"n{i}"] = parent
        cap_a = np.array(draw(st.lists(st.floats(0.0, 80.0), min_size=3 * T, max_size=3 * T))).reshape(3, T)
        nodes.append(NodeCapacity(f"n{i}", cap_a * 230.0, parent, ("a", "b", "c")))
    n_sess = draw(st.integers(1, 10))
    evses: list[Evse] = []
    sessions: list[Session] = []
    for j in range(n_sess):
        leaf = f"n{draw(st.integers(0, n_nodes - 1))}"
        path: list[str] = []
        cur: str | None = leaf
        while cur is not None:
            path.append(cur)
            cur = parents[cur]
        evses.append(
            Evse(
                f"e{j}", tuple(path), draw(st.sampled_from(PHASE_MAPS)), draw(st.sampled_from([16.0, 32.0, 63.0])), 6.0
            )
        )
        arr = draw(st.integers(-2, T))
        dep = draw(st.one_of(st.none(), st.integers(arr, T + 3)))
        sessions.append(
            Session(
                f"s{j}",
                f"e{j}",
                draw(st.floats(0.0, 80_000.0)),
                arr,
                dep,
                draw(st.sampled_from([6.0, 8.0])),
                draw(st.floats(6.0, 40.0)),
                draw(st.integers(1, 3)),
                draw(st.sampled_from([230.0, 240.0])),
                draw(st.sampled_from([1.0, 2.0])),
                draw(st.floats(0.0, 20_000.0)),
                draw(st.sampled_from([0.0, 0.0, 5_000.0, math.inf])),  # an unknown need's extra
            )
        )
    price = np.array(draw(st.lists(st.floats(0.0, 0.5), min_size=T, max_size=T)))
    pv = {"n0": np.array(draw(st.lists(st.floats(0.0, 10_000.0), min_size=T, max_size=T)))}
    cfg = PlannerConfig(
        default_dwell_s=draw(st.sampled_from([1800.0, 8 * 3600.0])),
        two_stage=draw(st.sampled_from([None, True, False])),
        solver=draw(st.sampled_from(["auto", "ipm"])),
        coarse_factor=draw(st.sampled_from([1, 3])),
        fine_slots=draw(st.integers(0, 3)),
        hierarchical=draw(st.booleans()),
    )
    return PlanningProblem(SlotGrid(datetime(2026, 1, 1), T, 900.0), nodes, evses, sessions, price, pv, cfg)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_rounded_plan_respects_every_limit(problem: PlanningProblem) -> None:
    plan = LpPlanner().plan(problem)
    T = problem.slots.count
    x = plan.current_a
    for node in problem.nodes:
        assert (plan.node_load_w[node.node_id] <= np.maximum(node.capacity_w, 0.0) + 1e-6).all(), node.node_id
    evses = {e.evse_id: e for e in problem.evses}
    for i, s in enumerate(problem.sessions):
        ev = evses[s.evse_id]
        assert (x[i] >= 0).all()
        assert (x[i] <= min(s.max_current_a, ev.max_current_a) + 1e-9).all()
        on = x[i] > 0
        assert (x[i][on] >= max(s.min_current_a, ev.min_current_a) - 1e-9).all()
        dep = (
            s.departure_slot
            if s.departure_slot is not None
            else s.arrival_slot + 2 * int(problem.config.default_dwell_s // 1800)
        )  # 15-min slots
        window = np.zeros(T, dtype=bool)
        window[max(s.arrival_slot, 0) : max(min(dep, T), 0)] = True
        assert not on[~window].any(), "charging outside arrival…departure"
        k = s.voltage_v * len(plan.phases[i]) * 0.25
        # at most one minimum-current slot more than the remaining need and its extra (the car stops when full)
        assert x[i].sum() * k <= s.remaining_wh + s.extra_wh + max(s.min_current_a, 6.0) * k + 1e-6
        v = plan.verdicts[s.session_id]
        assert v.planned_wh <= s.remaining_wh + 1e-6
        assert v.shortfall_wh >= 0
