"""Station events → allocator: a new connection re-installs the fallback even if one is in flight."""

from __future__ import annotations

from datetime import UTC, datetime

from gridcharge.allocation.adapters.codec import apply_station_event
from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig, ProfileCommand
from gridcharge.command.v1 import command_pb2 as C
from gridcharge.shared.topology import parse_topology
from gridcharge.station.v1 import station_pb2

TOPO = parse_topology(
    {
        "nominal_voltage_v": 230.0,
        "nodes": [{"id": "site", "limit_a": [63, 63, 63]}],
        "stations": [{"id": "s1", "node": "site", "max_current_a": 32, "fallback_current_a": 6}],
    }
)
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def event(kind: str, replica: str = "") -> station_pb2.StationEvent:
    ev = station_pb2.StationEvent(station_id="s1")
    ev.occurred_at.FromDatetime(T0)
    if kind == "connected":
        ev.connected.replica_id = replica
    else:
        ev.boot.vendor = "sim"
    return ev


def fallbacks(cmds: list[ProfileCommand]) -> list[ProfileCommand]:
    return [c for c in cmds if c.purpose == "fallback"]


def test_boot_right_after_connected_sends_one_fallback() -> None:
    alloc = Allocator(TOPO, AllocatorConfig())
    first = apply_station_event(alloc, event("connected", "gw-0"), T0)
    again = apply_station_event(alloc, event("boot"), T0)
    assert len(fallbacks(first.commands)) == 1 and not fallbacks(again.commands)


def test_reconnect_through_another_replica_resends_a_fallback_in_flight() -> None:
    """The fallback went out through replica 0, which died before answering; the station reconnects to
    replica 1 two seconds later: the lost command must not stop the fallback from being installed again
    (the e2e gateway-kill test saw a station get nothing for 55 s)."""
    alloc = Allocator(TOPO, AllocatorConfig())
    sent = apply_station_event(alloc, event("connected", "gw-0"), T0).commands
    assert sent and alloc.ledgers["s1"].pending
    later = T0.replace(second=2)
    again = apply_station_event(alloc, event("connected", "gw-1"), later)
    assert len(fallbacks(again.commands)) == 1
    c = fallbacks(again.commands)[0]
    alloc.command_result("s1", c.command_id, C.COMMAND_OUTCOME_ACCEPTED, later.timestamp())
    assert alloc.ledgers["s1"].fallback_installed
