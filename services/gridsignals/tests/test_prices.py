"""PRICE events → PriceSignal specs per scope; overlaps, ended intervals, withdrawal, the bus record."""

from __future__ import annotations

import math

from gridcharge.grid.v1 import grid_pb2
from gridcharge.gridsignals.adapters.codec import price_record_key, price_signal
from gridcharge.gridsignals.core.limits import NodeMap
from gridcharge.gridsignals.core.oadr import IntervalPrice, ParsedEvent
from gridcharge.gridsignals.core.prices import (
    SITE_SCOPE,
    PriceSpec,
    event_prices,
    price_id,
    price_intervals,
    reconcile_prices,
)
from gridcharge.shared.codec import timestamp_dt

NODES = NodeMap({"feeder-7": "transformer-1", "dso-prices": "site"})


def ev(prices: tuple[IntervalPrice, ...], targets: tuple[str, ...] = (), currency: str = "EUR") -> ParsedEvent:
    return ParsedEvent("ev-1", "p-1", "", targets, (), (), True, prices, currency)


def test_prices_follow_the_node_map_else_the_whole_site() -> None:
    e = ev((IntervalPrice(100, 200, 0.4),), targets=("feeder-7",))
    [spec] = event_prices(e, "other", NODES, now=0)
    assert (spec.node_id, spec.price_id, spec.currency) == ("transformer-1", "openadr-ev-1", "EUR")
    assert spec.intervals == (IntervalPrice(100, 200, 0.4),)
    [by_program] = event_prices(ev((IntervalPrice(100, 200, 0.4),)), "dso-prices", NODES, now=0)
    assert by_program.node_id == "site"
    # a price the map says nothing about is the site's tariff (unlike a limit, which would be ignored)
    [site] = event_prices(ev((IntervalPrice(100, 200, 0.4),)), "other", NODES, now=0)
    assert site.node_id == SITE_SCOPE
    assert price_record_key(site) == "*/openadr-ev-1" and price_record_key(spec) == "transformer-1/openadr-ev-1"


def test_overlaps_cut_at_the_later_start_and_ended_intervals_drop() -> None:
    ivs = (IntervalPrice(300, 400, 0.1), IntervalPrice(100, 250, 0.3), IntervalPrice(200, math.inf, 0.2))
    assert price_intervals(ivs, now=0) == (
        IntervalPrice(100, 200, 0.3),
        IntervalPrice(200, 300, 0.2),
        IntervalPrice(300, 400, 0.1),
    )
    assert price_intervals(ivs, now=250) == (IntervalPrice(200, 300, 0.2), IntervalPrice(300, 400, 0.1))
    assert event_prices(ev(ivs), "p", NODES, now=400) == []  # all over: nothing (withdrawn by reconcile)


def test_long_event_ids_give_64_character_ids() -> None:
    assert len(price_id("x" * 128)) <= 64 and price_id("x" * 128) != price_id("y" * 128)


def test_reconcile_publishes_changes_only_and_withdraws_gone_prices() -> None:
    a = PriceSpec("", "openadr-a", "EUR", (IntervalPrice(0, 100, 0.3),))
    b = PriceSpec("", "openadr-b", "EUR", (IntervalPrice(0, 100, 0.2),))
    first = reconcile_prices({}, [a, b])
    assert first.publish == [a, b] and first.withdraw == []
    same = reconcile_prices({a.key: a, b.key: b}, [a, b])
    assert same.publish == [] and same.withdraw == []  # no heartbeat: prices do not go stale
    b2 = PriceSpec("", "openadr-b", "EUR", (IntervalPrice(0, 100, 0.25),))
    changed = reconcile_prices({a.key: a, b.key: b}, [b2])
    assert changed.publish == [b2]
    assert changed.withdraw == [PriceSpec("", "openadr-a", "EUR", ())]


def test_price_signal_record() -> None:
    spec = PriceSpec("site", "openadr-ev-1", "EUR", (IntervalPrice(100, 200, 0.4), IntervalPrice(200, math.inf, -0.05)))
    msg = price_signal(spec, "gridsignals/it", now=50)
    back = grid_pb2.PriceSignal.FromString(msg.SerializeToString())
    assert (back.price_id, back.source, back.node_id, back.currency) == ("openadr-ev-1", "openadr", "site", "EUR")
    first, second = back.intervals
    assert (timestamp_dt(first.start).timestamp(), timestamp_dt(first.end).timestamp(), first.price_per_kwh) == (  # type: ignore[union-attr]
        100,
        200,
        0.4,
    )
    assert not second.HasField("end") and second.price_per_kwh == -0.05
    assert list(price_signal(spec.withdrawn(), "gridsignals/it", now=60).intervals) == []
