"""Parsed OpenADR PRICE events → the price signals gridcharge plans with, and what to publish or withdraw.

Meaning of the fields as the consumer uses them (allocation ``core/prices.py``): each interval's
``price_per_kwh`` replaces the topology's tariff from its ``start`` to its ``end`` for the energy drawn under
``node_id`` ("" = the whole site). A signal without intervals withdraws the price with that id. Prices do not go
stale (an announced price stays the price when the VTN goes quiet), so unlike limits they are published when
they change, not at every poll. Pure: times are POSIX s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gridcharge.gridsignals.core.limits import NodeMap, limit_id
from gridcharge.gridsignals.core.oadr import IntervalPrice, ParsedEvent

SITE_SCOPE = ""  # node_id of a price for the whole site


@dataclass(frozen=True)
class PriceSpec:
    """One PriceSignal to publish (source ``openadr``): intervals in time order, not overlapping, none ended."""

    node_id: str
    price_id: str
    currency: str
    intervals: tuple[IntervalPrice, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.node_id, self.price_id)

    def withdrawn(self) -> PriceSpec:
        """The message that withdraws this price: the same id without intervals."""
        return PriceSpec(self.node_id, self.price_id, self.currency, ())


def price_id(event_id: str) -> str:
    """``openadr-<event id>`` (hashed when longer than 64 characters), as the event's limits are named."""
    return limit_id(event_id, 0)


def price_intervals(intervals: Iterable[IntervalPrice], now: float) -> tuple[IntervalPrice, ...]:
    """Time order, not overlapping (where two overlap, the later start wins from its start, as for limits), and
    without what has ended at ``now``."""
    ordered = sorted(intervals, key=lambda i: i.start)
    out: list[IntervalPrice] = []
    for i, iv in enumerate(ordered):
        end = min(iv.end, ordered[i + 1].start) if i + 1 < len(ordered) else iv.end
        if end > iv.start and end > now:
            out.append(IntervalPrice(iv.start, end, iv.price_per_kwh))
    return tuple(out)


def event_prices(event: ParsedEvent, program_name: str, nodes: NodeMap, now: float) -> list[PriceSpec]:
    """The prices one event sets: one signal per node its targets or program map to (the same mapping as its
    limits), or one for the whole site when the map names no node for it — a tariff is the site's contract
    and the VTN sends the VEN only the events meant for it. Nothing when all its PRICE intervals have ended."""
    intervals = price_intervals(event.prices, now)
    if not intervals:
        return []
    scopes = nodes.nodes_for(event.targets, program_name) or [SITE_SCOPE]
    pid = price_id(event.event_id)
    return [PriceSpec(node_id, pid, event.currency, intervals) for node_id in scopes]


@dataclass(frozen=True)
class PriceChanges:
    """What to put on the bus: prices to publish (new or changed) and prices to withdraw."""

    publish: list[PriceSpec]
    withdraw: list[PriceSpec]


def reconcile_prices(published: Mapping[tuple[str, str], PriceSpec], desired: Iterable[PriceSpec]) -> PriceChanges:
    """Desired prices vs what is on the bus: new or changed ones are published, ones no longer desired (event
    deleted, cancelled, or all its intervals over) withdrawn."""
    want = {s.key: s for s in desired}
    publish = [s for k, s in want.items() if published.get(k) != s]
    withdraw = [published[k].withdrawn() for k in published if k not in want]
    return PriceChanges(publish, withdraw)
