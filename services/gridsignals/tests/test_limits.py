"""Events → ExternalLimit specs per node; withdrawal and heartbeat; the fallback limits."""

from __future__ import annotations

import math

from gridcharge.gridsignals.core.limits import (
    FALLBACK_LIMIT_ID,
    NodeMap,
    contiguous_blocks,
    event_limits,
    fallback_limits,
    limit_id,
    reconcile,
)
from gridcharge.gridsignals.core.oadr import IntervalLimit, ParsedEvent

W10 = (10_000.0, 10_000.0, 10_000.0)
W5 = (5_000.0, 5_000.0, 5_000.0)
NODES = NodeMap({"feeder-7": "transformer-1", "dso-capacity": "site", "*": "site"})


def ev(limits: tuple[IntervalLimit, ...], targets: tuple[str, ...] = ()) -> ParsedEvent:
    return ParsedEvent("ev-1", "p-1", "", targets, limits, (), False)


def test_node_map_targets_then_program_then_default() -> None:
    assert NODES.nodes_for(["feeder-7", "unknown"], "other") == ["transformer-1"]
    assert NODES.nodes_for([], "dso-capacity") == ["site"]
    assert NODES.nodes_for(["x"], "other") == ["site"]
    assert NodeMap({"feeder-7": "transformer-1"}).nodes_for(["x"], "p") == []


def test_one_limit_per_event_with_schedule_and_fallback() -> None:
    e = ev((IntervalLimit(100, 200, W10), IntervalLimit(200, 300, W5)), targets=("feeder-7",))
    [spec] = event_limits(e, "p", NODES, {"transformer-1": W5}, 900, now=150)
    assert (spec.node_id, spec.limit_id) == ("transformer-1", "openadr-ev-1")
    assert (spec.valid_from, spec.valid_to, spec.limit_w) == (100, 300, W10)
    assert spec.schedule == ((200, W5),) and spec.fallback_w == W5 and spec.stale_after_s == 900


def test_gaps_split_an_event_and_ended_blocks_are_dropped() -> None:
    ivs = (IntervalLimit(0, 100, W10), IntervalLimit(200, 300, W5))
    assert len(contiguous_blocks(ivs)) == 2
    specs = event_limits(ev(ivs), "p", NODES, {}, 900, now=150)
    assert [(s.limit_id, s.valid_from) for s in specs] == [("openadr-ev-1-1", 200)]
    assert specs[0].fallback_w is None


def test_long_ids_stay_within_64_characters() -> None:
    assert len(limit_id("e" * 128, 3)) <= 64 and limit_id("e" * 128, 0) != limit_id("f" * 128, 0)


def test_reconcile_heartbeat_change_and_withdraw() -> None:
    e = ev((IntervalLimit(0, 1000, W10),))
    [spec] = event_limits(e, "p", NODES, {}, 900, now=10)
    first = reconcile({}, [spec], 10, heartbeat=False)
    assert first.publish == [spec] and first.withdraw == []
    published = {spec.key: spec}
    assert reconcile(published, [spec], 20, heartbeat=False).publish == []
    assert reconcile(published, [spec], 20, heartbeat=True).publish == [spec]
    gone = reconcile(published, [], 30, heartbeat=True)
    assert gone.publish == [] and len(gone.withdraw) == 1
    w = gone.withdraw[0]
    assert w.key == spec.key and w.valid_from == w.valid_to == 30


def test_fallback_limits_are_open_ended_and_never_stale() -> None:
    [f] = fallback_limits({"site": W5}, since=50)
    assert (f.limit_id, f.valid_from, f.valid_to, f.limit_w, f.stale_after_s) == (
        FALLBACK_LIMIT_ID,
        50,
        math.inf,
        W5,
        0.0,
    )
