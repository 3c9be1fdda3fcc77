"""The offline optimum of a simulated run: what a scheduler that knew the future could have delivered.

One LP over the whole run (the allocation service's planner, 5-min slots, continuous currents, no 6 A
minimum, no fallback reservation, no forecast error) that knows every arrival, departure and energy need,
and per node and phase the true limit in force (DSO windows included) less the true non-EV load recorded by
the simulation. It is the physical upper bound an online scheduler is measured against (as `gridcharge
bench allocator` does for the ACN data): the demo reports delivered energy as a share of it, and a session
the optimum cannot complete either is not counted as a miss of the scheduler ("feasible at the site").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from gridcharge.shared.topology import PHASES

if TYPE_CHECKING:
    from gridcharge.simulator.sim import Simulation

log = logging.getLogger(__name__)

SLOT_S = 300.0


@dataclass(frozen=True)
class OfflineOptimum:
    """Energy the optimum delivers in total and per session (Wh), and its solve time (s)."""

    delivered_wh: float
    per_session_wh: dict[str, float]
    seconds: float


def offline_optimum(sim: Simulation, slot_s: float = SLOT_S) -> OfflineOptimum | None:
    """Solve the run's offline LP; None when the planner is not installed or nothing was recorded."""
    try:
        from gridcharge.allocation.core.model import (
            Evse,
            NodeCapacity,
            PlannerConfig,
            PlanningProblem,
            Session,
            SlotGrid,
        )
        from gridcharge.allocation.core.planner import LpPlanner
    except ImportError:
        return None
    rec, topo = sim.rec, sim.topo
    if len(rec.t) < 2:
        return None
    t0 = sim.sc.start_s
    T = max(1, math.ceil((rec.t[-1] - t0) / slot_s))
    times = np.asarray(rec.t)
    slot_of = np.minimum(((times - t0) // slot_s).astype(int), T - 1)
    # the EV power a slot allows on average: within a slot the load must stay under the limit at every step,
    # so its mean EV power is at most the mean room (a relaxation: the LP stays an upper bound)
    counts = np.bincount(slot_of, minlength=T).astype(float)
    nodes = []
    for n in topo.nodes:
        room = np.maximum(np.asarray(rec.limit_w[n.id]) - np.asarray(rec.base_w[n.id]), 0.0)  # [steps, 3]
        cap = np.full((3, T), np.inf)
        for p in range(3):
            sums = np.bincount(slot_of, weights=room[:, p], minlength=T)
            cap[p] = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.inf)
        nodes.append(NodeCapacity(n.id, cap, n.parent))
    evses: dict[str, Evse] = {}
    sessions = []
    end = rec.t[-1]
    for v in sim.visits:
        ev = v.ev
        if ev.arrival_s >= end:
            continue
        st = topo.station_by_id[v.station_id]
        key = f"{v.station_id}/{v.evse_id}"
        hw = min(st.max_current_a, st.evse(v.evse_id).max_current_a or st.max_current_a, ev.max_current_a)
        grid = tuple(PHASES.index(p) for p in st.evse_phases(v.evse_id))
        evses.setdefault(key, Evse(key, tuple(topo.station_path(v.station_id)), grid, hw, 0.0))
        # every slot the car is present in, even in part (an upper bound, like the mean room)
        arrive = max(0, math.floor((ev.arrival_s - t0) / slot_s))
        leave = min(T, math.ceil((min(ev.departure_s, end) - t0) / slot_s))
        if leave <= arrive:
            continue
        sessions.append(
            Session(ev.ev_id, key, ev.energy_need_wh, arrive, leave, 0.0, hw, min(ev.phases, len(grid)), sim.v)
        )
    if not sessions:
        return OfflineOptimum(0.0, {}, 0.0)
    cfg = PlannerConfig(
        two_stage=False,
        early_weight=0.0,
        current_step_a=0.0,
        apply_min_current=False,
        time_limit_s=120.0,
        fairness_weight=0.0,
        pv_weight=0.0,
        price_weight=0.0,
    )
    problem = PlanningProblem(
        SlotGrid(datetime.fromtimestamp(t0, UTC), T, slot_s), nodes, list(evses.values()), sessions, config=cfg
    )
    plan = LpPlanner().plan(problem)
    per = {sid: float(v.planned_wh) for sid, v in plan.verdicts.items()}
    return OfflineOptimum(sum(per.values()), per, plan.solve_time_s)
