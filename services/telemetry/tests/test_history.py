"""15-minute interval accumulation."""

from __future__ import annotations

import math

import pytest
from gridcharge.telemetry.core.history import IntervalAccumulator
from gridcharge.telemetry.core.model import NodeLoadView
from gridcharge.telemetry.testing import T0


def view(t: float, load: float, base: float, ambient: float = math.nan) -> NodeLoadView:
    p = (load, load, load)
    return NodeLoadView("n", t, p, p, (0.0, 0.0, 0.0), (base, base, base), (1e5,) * 3, True, True, 0, 0, ambient)


def test_interval_closes_when_next_slot_starts() -> None:
    acc = IntervalAccumulator(900)
    out = []
    for i in range(0, 180):  # 15 min at 5 s, then the first sample of the next slot
        out += acc.add([view(T0 + 5 * i, 1000 + i, 100, ambient=10.0 if i % 2 else math.nan)])
    assert out == []
    closed = acc.add([view(T0 + 900, 0, 0)])
    assert len(closed) == 1
    i0 = closed[0]
    assert i0.start_s == T0 and i0.interval_s == 900 and i0.samples == 180
    assert i0.mean_load_w[0] == pytest.approx(1000 + 179 / 2)
    assert i0.max_load_w == (1179, 1179, 1179)
    assert i0.mean_base_load_w == (100, 100, 100)
    assert i0.mean_ambient_c == 10.0


def test_flush_closes_ended_intervals_and_alignment() -> None:
    acc = IntervalAccumulator(900)
    acc.add([view(T0 + 100, 5, 5)])
    assert acc.flush(T0 + 899) == []
    out = acc.flush(T0 + 900)
    assert len(out) == 1 and out[0].start_s == T0 and math.isnan(out[0].mean_ambient_c)
    assert acc.slot_start(T0 + 1799) == T0 + 900
