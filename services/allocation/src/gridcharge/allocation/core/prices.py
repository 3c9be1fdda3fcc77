"""The energy price of every planning slot: the topology's tariff, overridden by external prices while they last.

The base is the topology's ``tariff``: time-of-use windows in the site's local time (``site.timezone``; a window
may wrap midnight, the first matching window wins), else its default price. External prices
(``gridcharge.grid.prices.v1``, e.g. OpenADR PRICE events from gridsignals) replace it for as long as one of
their intervals lasts; where two overlap, the one received last wins. A slot's price is the time-weighted mean
over the slot, so a price change inside a slot counts for its share.

The planner has one price series for all sessions, so an external price is planned with only when it covers every
station: scoped to the whole site, or to a node every station's current flows through. Its currency must be the
tariff's (a price without one is taken to be in it). ``refusal`` says why a price is not used. Price is the
planner's secondary objective (stage 2 in ``planner.py``): it moves energy to cheaper slots, never takes energy
away from a car. Pure: times POSIX s, prices currency per kWh.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from gridcharge.shared.topology import Tariff, Topology

MAX_PRICE_PER_KWH = 1000.0  # |price| above this is a unit error, not a price
MAX_INTERVALS = 2000


class PriceError(ValueError):
    """A price signal that cannot be used (non-finite or absurd price, empty or unordered interval)."""


@dataclass(frozen=True)
class PriceInterval:
    """``price_per_kwh`` from ``start`` to ``end`` (POSIX s; ``end`` may be inf)."""

    start: float
    end: float
    price_per_kwh: float


@dataclass(frozen=True)
class ExternalPrice:
    """Prices announced by ``source`` for ``node_id`` ("" = the whole site); no intervals = withdrawn."""

    price_id: str
    source: str
    node_id: str
    currency: str
    intervals: tuple[PriceInterval, ...]
    received_at: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.node_id, self.price_id)

    def ends_after(self, t: float) -> bool:
        """Some interval still lasts after ``t``."""
        return any(iv.end > t for iv in self.intervals)

    def price_at(self, t: float) -> float | None:
        """The price in force at ``t``; None outside every interval."""
        i = bisect.bisect_right([iv.start for iv in self.intervals], t) - 1
        if i >= 0 and t < self.intervals[i].end:
            return self.intervals[i].price_per_kwh
        return None


def checked(price: ExternalPrice) -> ExternalPrice:
    """The price with its intervals in time order; raises :class:`PriceError` naming what is wrong."""
    if len(price.intervals) > MAX_INTERVALS:
        raise PriceError(f"more than {MAX_INTERVALS} intervals")
    for iv in price.intervals:
        if not math.isfinite(iv.price_per_kwh) or abs(iv.price_per_kwh) > MAX_PRICE_PER_KWH:
            raise PriceError(f"price {iv.price_per_kwh!r} per kWh is not a finite number within ±{MAX_PRICE_PER_KWH:g}")
        if not math.isfinite(iv.start) or not iv.end > iv.start:
            raise PriceError("an interval ends before it starts (or has no start)")
    ordered = tuple(sorted(price.intervals, key=lambda iv: iv.start))
    for a, b in itertools.pairwise(ordered):
        if b.start < a.end:
            raise PriceError("intervals overlap")
    return ExternalPrice(price.price_id, price.source, price.node_id, price.currency, ordered, price.received_at)


def refusal(topology: Topology, price: ExternalPrice) -> str:
    """Why the planner cannot use ``price`` ("" = it can): another currency than the tariff's, an unknown node, or
    a node not every station is under (the plan has one price per slot for all sessions)."""
    tariff_currency = topology.tariff.currency
    if price.currency and price.currency.upper() != tariff_currency.upper():
        return f"currency {price.currency[:8]} is not the tariff's ({tariff_currency})"
    if not price.node_id:
        return ""
    if price.node_id not in topology.node_by_id:
        return f"unknown node {price.node_id[:64]!r}"
    if any(price.node_id not in topology.station_path(s.id) for s in topology.stations):
        return f"node {price.node_id[:64]!r} does not supply every station (one price per slot for the whole site)"
    return ""


def _minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:5])


def tariff_price(tariff: Tariff, zone: ZoneInfo, t: float) -> float:
    """The tariff's price at ``t``: the first time-of-use window (local ``HH:MM``, may wrap midnight) holding the
    local time, else the default price."""
    local = datetime.fromtimestamp(t, zone)
    mins = local.hour * 60 + local.minute + local.second / 60.0
    for w in tariff.windows:
        a, b = _minutes(w.start), _minutes(w.end)
        if (a <= mins < b) if a < b else (mins >= a or mins < b):
            return float(w.price_per_kwh)
    return float(tariff.default_price_per_kwh)


def tariff_changes(tariff: Tariff, zone: ZoneInfo, start: float, end: float) -> list[float]:
    """POSIX times in (start, end) at which a tariff window starts or ends (local wall-clock times, DST included)."""
    if not tariff.windows:
        return []
    first = datetime.fromtimestamp(start, zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end, zone).date() + timedelta(days=1)
    minutes = sorted({_minutes(x) for w in tariff.windows for x in (w.start, w.end)})
    out: list[float] = []
    day: date = first
    while day <= last:
        midnight = datetime(day.year, day.month, day.day)
        for m in minutes:
            t = (midnight + timedelta(minutes=m)).replace(tzinfo=zone).timestamp()
            if start < t < end:
                out.append(t)
        day += timedelta(days=1)
    return out


def price_series(
    tariff: Tariff, zone: ZoneInfo, prices: Iterable[ExternalPrice], start: float, count: int, slot_s: float
) -> np.ndarray:
    """Price per kWh of each of ``count`` slots of ``slot_s`` s from ``start``: the time-weighted mean of the
    price in force, an external price where one lasts (the newest received wins), else the tariff."""
    if count <= 0:
        return np.zeros(0)
    if slot_s <= 0 or not math.isfinite(start):
        raise ValueError("slots need a finite start and a positive length")
    end = start + count * slot_s
    active = sorted(
        (p for p in prices if p.intervals and p.ends_after(start)), key=lambda p: (p.received_at, p.price_id)
    )
    active.reverse()  # newest first
    cuts = {start + i * slot_s for i in range(count + 1)}
    cuts.update(tariff_changes(tariff, zone, start, end))
    for p in active:
        for iv in p.intervals:
            cuts.update(t for t in (iv.start, iv.end) if start < t < end)
    points = sorted(cuts)
    total = np.zeros(count)
    for a, b in itertools.pairwise(points):
        mid = (a + b) / 2.0
        value = next((v for p in active if (v := p.price_at(mid)) is not None), None)
        if value is None:
            value = tariff_price(tariff, zone, mid)
        slot = min(int((mid - start) // slot_s), count - 1)
        total[slot] += value * (b - a)
    return total / slot_s


def plan_prices(
    topology: Topology, prices: Iterable[ExternalPrice], start: float, count: int, slot_s: float
) -> np.ndarray:
    """:func:`price_series` of the topology's tariff in the site's time zone."""
    return price_series(topology.tariff, ZoneInfo(topology.site.timezone), prices, start, count, slot_s)
