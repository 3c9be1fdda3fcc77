"""Station-scoped external limits (a station's own OCPP NotifyChargingLimit, published by the gateway):
the planner gives that station no more than the limit, and the node keeps its full capacity for the others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gridcharge.allocation.adapters.codec import external_limit_window
from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig, ProfileCommand
from gridcharge.command.v1 import command_pb2 as C
from gridcharge.common.v1 import common_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.topology import parse_topology

V = 230.0
T0 = datetime(2026, 6, 3, 14, 0, tzinfo=UTC)
TOPO = parse_topology(
    {
        "nominal_voltage_v": V,
        "nodes": [{"id": "site", "limit_a": [40, 40, 40], "safety_margin_pct": 0}],
        "stations": [{"id": f"c{i}", "node": "site", "max_current_a": 16, "fallback_current_a": 6} for i in (1, 2)],
    }
)


def settle(alloc: Allocator, rounds: int = 4, at: datetime = T0) -> list[ProfileCommand]:
    sent: list[ProfileCommand] = []
    for _ in range(rounds):
        cmds = alloc.plan(at).commands
        for c in cmds:
            alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, at.timestamp())
        sent += cmds
    return sent


def station_limit(limit_a: float, evse_id: int = 0) -> grid_pb2.ExternalLimit:
    w = limit_a * V
    msg = grid_pb2.ExternalLimit(
        node_id="site",
        limit_id=f"c1/{evse_id}/EMS",
        source="ocpp-ems",
        station_id="c1",
        evse_id=evse_id,
        limit_w=common_pb2.PhaseValues(l1=w, l2=w, l3=w),
    )
    msg.valid_from.FromDatetime(T0)
    return msg


def test_a_station_limit_caps_that_station_only() -> None:
    alloc = Allocator(TOPO, AllocatorConfig())
    for s in TOPO.stations:
        for c in alloc.station_online(s.id, T0.timestamp()):
            alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, T0.timestamp())
    for sid in ("c1", "c2"):
        alloc.book.start(sid, 1, f"tx-{sid}", T0)
    assert alloc.external_limit(external_limit_window(station_limit(10.0, evse_id=1), T0))
    settle(alloc)
    assert alloc.grant_a["c1/1"] <= 10.0 + 1e-9  # the station's own limit
    assert alloc.grant_a["c2/1"] == 16.0  # the node (40 A) is not limited by it
    assert alloc.capacity_limit_w("site", T0.timestamp()) == (40 * V,) * 3
    # withdrawn (ClearedChargingLimit: an empty window): c1 may have its 16 A again
    gone = station_limit(10.0, evse_id=1)
    gone.valid_to.FromDatetime(T0)
    assert alloc.external_limit(external_limit_window(gone, T0))
    settle(alloc, at=T0 + timedelta(seconds=61))  # (a raise waits a minute after the last write)
    assert alloc.grant_a["c1/1"] == 16.0
