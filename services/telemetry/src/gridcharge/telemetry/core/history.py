"""15-minute (configurable) per-node load history from the periodic snapshots.

Intervals are aligned to multiples of `interval_s` since the epoch (UTC), so every replica and the
forecasting service agree on slot boundaries. A mean is the average of the snapshots that fell in the
interval (they are evenly spaced, so this is the time average up to one snapshot period).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gridcharge.telemetry.core.model import P3, ZERO3, NodeLoadView, add3, max3


@dataclass(frozen=True)
class LoadInterval:
    """One node's closed interval (W per grid phase, °C)."""

    node_id: str
    start_s: float
    interval_s: int
    mean_load_w: P3
    mean_base_load_w: P3
    max_load_w: P3
    mean_ambient_c: float  # NaN when no snapshot had a temperature
    samples: int


@dataclass
class _Acc:
    start_s: float
    n: int = 0
    load: P3 = ZERO3
    base: P3 = ZERO3
    peak: P3 = (-math.inf, -math.inf, -math.inf)
    temp_sum: float = 0.0
    temp_n: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def close(self, node_id: str, interval_s: int) -> LoadInterval:
        n = max(self.n, 1)
        return LoadInterval(
            node_id=node_id,
            start_s=self.start_s,
            interval_s=interval_s,
            mean_load_w=(self.load[0] / n, self.load[1] / n, self.load[2] / n),
            mean_base_load_w=(self.base[0] / n, self.base[1] / n, self.base[2] / n),
            max_load_w=self.peak,
            mean_ambient_c=self.temp_sum / self.temp_n if self.temp_n else math.nan,
            samples=self.n,
        )


class IntervalAccumulator:
    """Feeds on snapshots; returns each node's interval once a snapshot from a later interval arrives
    (or `flush(now)` passes its end)."""

    def __init__(self, interval_s: int = 900) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._acc: dict[str, _Acc] = {}

    def slot_start(self, t_s: float) -> float:
        return math.floor(t_s / self.interval_s) * self.interval_s

    def add(self, views: dict[str, NodeLoadView] | list[NodeLoadView]) -> list[LoadInterval]:
        """Add one snapshot per node; returns intervals that closed because time moved past them."""
        closed: list[LoadInterval] = []
        for v in views.values() if isinstance(views, dict) else views:
            start = self.slot_start(v.as_of_s)
            acc = self._acc.get(v.node_id)
            if acc is not None and acc.start_s != start:
                if start < acc.start_s:
                    continue  # clock went backwards: ignore the sample
                closed.append(acc.close(v.node_id, self.interval_s))
                acc = None
            if acc is None:
                acc = self._acc[v.node_id] = _Acc(start)
            acc.n += 1
            acc.load = add3(acc.load, v.load_w)
            acc.base = add3(acc.base, v.base_load_w)
            acc.peak = max3(acc.peak, v.load_w)
            if not math.isnan(v.ambient_c):
                acc.temp_sum += v.ambient_c
                acc.temp_n += 1
        return closed

    def flush(self, now_s: float) -> list[LoadInterval]:
        """Close every interval that ended at or before `now_s`."""
        out = []
        for nid, acc in list(self._acc.items()):
            if acc.start_s + self.interval_s <= now_s:
                out.append(acc.close(nid, self.interval_s))
                del self._acc[nid]
        return out
