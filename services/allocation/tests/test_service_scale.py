"""One full allocation cycle (capacity, HiGHS plan, budget fit, commands) at realistic scale.

Run alone for the figure: ``.venv/bin/python -m pytest services/allocation/tests/test_service_scale.py -s``
(prints the wall time of the cycle and of the planner inside it).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig
from gridcharge.command.v1 import command_pb2
from gridcharge.shared.topology import Topology, parse_topology

NOW = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def tree(transformers: int, per: int) -> Topology:
    """A feeder with ``transformers`` transformers of ``per`` three-phase 32 A stations each."""
    nodes = [{"id": "feeder", "kind": "feeder", "limit_a": [transformers * per * 8.0] * 3, "safety_margin_pct": 0}]
    stations = []
    rot = (["L1", "L2", "L3"], ["L2", "L3", "L1"], ["L3", "L1", "L2"])
    for t in range(transformers):
        nodes.append(
            {
                "id": f"tx{t}",
                "kind": "transformer",
                "parent": "feeder",
                "limit_a": [per * 12.0] * 3,
                "safety_margin_pct": 0,
            }
        )
        for i in range(per):
            stations.append(
                {
                    "id": f"cs{t}-{i}",
                    "node": f"tx{t}",
                    "max_current_a": 32,
                    "fallback_current_a": 6,
                    "phase_map": rot[i % 3],
                }
            )
    return parse_topology({"nodes": nodes, "stations": stations})


def test_cycle_at_1000_sessions() -> None:
    topo = tree(10, 100)
    alloc = Allocator(topo, AllocatorConfig(horizon_slots=96))
    t = NOW.timestamp()
    for s in topo.stations:
        for c in alloc.station_online(s.id, t):
            alloc.command_result(c.station_id, c.command_id, command_pb2.COMMAND_OUTCOME_ACCEPTED, t)
    for k, s in enumerate(topo.stations):
        sess = alloc.book.start(s.id, 1, f"tx{k}", NOW)
        assert sess is not None
        alloc.book.set_preferences(
            sess.session_id, departure=NOW + timedelta(hours=2 + k % 10), energy_wh=5000 + 500 * (k % 40)
        )
    t0 = time.perf_counter()
    res = alloc.plan(NOW + timedelta(seconds=1))
    wall = time.perf_counter() - t0
    assert res.plan is not None and len(res.plan.session_ids) == 1000
    print(
        f"\n1000 sessions, 10 transformers x 100 stations, 96 slots: cycle {wall:.2f} s "
        f"(planner {res.plan.solve_time_s:.2f} s), {len(res.commands)} commands"
    )
    # the budget holds: worst case under every transformer within its capacity
    cap = alloc.capacity_now(NOW.timestamp() + 1)
    from gridcharge.allocation.core.budget import violations

    assert not violations(topo, cap, {**alloc.worst_case_a(NOW.timestamp() + 1), **res.station_caps_a})
    assert wall < 60.0
