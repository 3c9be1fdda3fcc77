"""OCPP 2.1 grid inputs in the allocator: priority charging serves a session first, a station's own limit is its
binding constraint (with the limit's source), and a failed profile check puts the station at its worst case and
sends its profiles again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gridcharge.allocation.adapters.codec import apply_station_event, external_limit_window
from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig, ProfileCommand
from gridcharge.command.v1 import command_pb2 as C
from gridcharge.common.v1 import common_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import to_timestamp
from gridcharge.shared.topology import parse_topology
from gridcharge.station.v1 import station_pb2

V = 230.0
T0 = datetime(2026, 6, 3, 14, 0, tzinfo=UTC)
TOPO = parse_topology(
    {
        "nominal_voltage_v": V,
        "nodes": [{"id": "site", "limit_a": [24, 24, 24], "safety_margin_pct": 0}],
        "stations": [
            {"id": f"c{i}", "node": "site", "max_current_a": 16, "fallback_current_a": 6, "ocpp": "2.1"} for i in (1, 2)
        ],
    }
)


def settle(alloc: Allocator, rounds: int = 4, at: datetime = T0) -> list[ProfileCommand]:
    sent: list[ProfileCommand] = []
    for i in range(rounds):
        t = at + timedelta(seconds=61 * i)
        cmds = alloc.plan(t).commands
        for c in cmds:
            alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, t.timestamp())
        sent += cmds
    return sent


def online(alloc: Allocator) -> None:
    for s in TOPO.stations:
        for c in alloc.station_online(s.id, T0.timestamp()):
            alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, T0.timestamp())


def event(station: str, **payload: object) -> station_pb2.StationEvent:
    ev = station_pb2.StationEvent(station_id=station, occurred_at=to_timestamp(T0))
    for k, v in payload.items():
        getattr(ev, k).CopyFrom(v)
    return ev


def test_priority_charging_serves_that_session_first_and_ends() -> None:
    alloc = Allocator(TOPO, AllocatorConfig())
    online(alloc)
    for sid in ("c1", "c2"):
        alloc.book.start(sid, 1, f"tx-{sid}", T0)
        # both want far more than 24 A can give by their departure
        alloc.book.needs(sid, 1, T0 + timedelta(hours=2), 60_000.0, 6.0, 16.0, 3)
    settle(alloc)
    # equal priority: one of them is served first (24 A: 16 + 8); priority goes to the other one
    low = min(("c1", "c2"), key=lambda sid: alloc.grant_a[f"{sid}/1"])
    high = "c1" if low == "c2" else "c2"
    assert alloc.grant_a[f"{low}/1"] < 16.0
    ch = apply_station_event(
        alloc,
        event(low, priority_charging=station_pb2.PriorityCharging(transaction_id=f"tx-{low}", activated=True)),
        T0,
    )
    assert ch.replan and alloc.book.find(low, 1).priority == 10  # type: ignore[union-attr]
    settle(alloc, at=T0 + timedelta(minutes=5))
    assert alloc.grant_a[f"{low}/1"] == 16.0 and alloc.grant_a[f"{high}/1"] <= 24.0 - 16.0 + 1e-9
    apply_station_event(
        alloc,
        event(low, priority_charging=station_pb2.PriorityCharging(transaction_id=f"tx-{low}", activated=False)),
        T0,
    )
    assert alloc.book.find(low, 1).priority == 1  # type: ignore[union-attr]
    # an unknown transaction changes nothing
    assert not apply_station_event(
        alloc, event("c1", priority_charging=station_pb2.PriorityCharging(transaction_id="nope", activated=True)), T0
    ).replan


def test_a_station_limit_is_the_binding_constraint_with_its_source() -> None:
    alloc = Allocator(TOPO, AllocatorConfig())
    online(alloc)
    alloc.book.start("c1", 1, "tx-c1", T0)
    alloc.book.needs("c1", 1, T0 + timedelta(hours=2), 60_000.0, 6.0, 16.0, 3)
    lim = grid_pb2.ExternalLimit(
        node_id="site",
        limit_id="c1/0/EMS",
        source="ocpp-ems",
        station_id="c1",
        evse_id=0,
        limit_w=common_pb2.PhaseValues(l1=10 * V, l2=8 * V, l3=12 * V),
    )
    lim.valid_from.FromDatetime(T0)
    assert alloc.external_limit(external_limit_window(lim, T0))
    res = None
    for i in range(3):
        res = alloc.plan(T0 + timedelta(seconds=61 * i))
        for c in res.commands:
            alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, T0.timestamp())
    assert res is not None
    assert alloc.grant_a["c1/1"] <= 8.0 + 1e-9  # the lowest phase of the per-phase (2.1) limit
    ex = next(iter(res.explanations.values()))
    assert ex.binding is not None and (ex.binding.node_id, ex.binding.source) == ("c1", "ocpp-ems")


def test_a_profile_mismatch_means_worst_case_and_a_resend() -> None:
    alloc = Allocator(TOPO, AllocatorConfig())
    online(alloc)
    alloc.book.start("c1", 1, "tx-c1", T0)
    alloc.book.start("c2", 1, "tx-c2", T0)
    settle(alloc)
    t = (T0 + timedelta(minutes=5)).timestamp()
    sid = min(("c1", "c2"), key=lambda s: alloc.ledgers[s].worst_case_a(t))
    assert alloc.ledgers[sid].worst_case_a(t) <= 8.0 + 1e-9  # its lease (24 A: 16 + 8)
    check = station_pb2.ProfileCheck(
        ok=False,
        complete=True,
        mismatches=[station_pb2.ProfileMismatch(kind="missing", evse_id=0, stack_level=0, profile_id=1000)],
    )
    ch = apply_station_event(alloc, event(sid, profile_check=check), T0 + timedelta(minutes=5))
    assert [c.purpose for c in ch.commands] == ["fallback"] and ch.replan
    led = alloc.ledgers[sid]
    assert led.worst_case_a(t) == 16.0 and led.in_failsafe(t, alloc.cfg.failsafe_hold_s)  # as if no profile
    assert led.last_failure.startswith("profile check: missing")
    # a passing check changes nothing
    other = "c1" if sid == "c2" else "c2"
    ok = apply_station_event(alloc, event(other, profile_check=station_pb2.ProfileCheck(ok=True, complete=True)), T0)
    assert not ok.commands and not ok.replan
    # the fallback accepted again and the hold over: planned again, with a lease sent again
    for c in ch.commands:
        alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, t)
    later = settle(alloc, at=T0 + timedelta(minutes=9))
    assert any(c.station_id == sid and c.purpose == "station_lease" for c in later)
