"""Fast limiter (seconds): react to measured node load between planning cycles (pure, no I/O).

``lower``: when measured load + margin exceeds a node's limit on a phase, take the smallest set of
current reductions that restores it — lowest priority first, the largest grant first among equals,
each connector only as far as needed (to its minimum current, else to 0).
``regrant``: when there is room again, give connectors back what the limiter took, highest priority
first, never above what the plan grants them.

Powers W per grid phase, currents A per phase.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_CURRENT_A = 6.0


@dataclass(frozen=True)
class Connector:
    """A charging connector under the node: its grid phases, current grant and the plan's grant."""

    key: str                       # station/evse
    phases: tuple[int, ...]        # grid phase indices it loads
    granted_a: float               # what it may draw now (A per phase)
    plan_a: float                  # what the plan grants (A per phase); the limiter never goes above
    priority: int = 1
    min_a: float = MIN_CURRENT_A
    drawing_a: float | None = None  # measured, when fresh


def lower(
    load_w: Sequence[float], limit_w: Sequence[float], margin_w: float, voltage_v: float,
    connectors: Sequence[Connector],
) -> dict[str, float]:
    """New grants (A) for the connectors that must go down so load + margin ≤ limit on every phase."""
    excess = [max(0.0, load_w[p] + margin_w - limit_w[p]) for p in range(3)]
    if max(excess) <= 0:
        return {}
    out: dict[str, float] = {}
    for c in sorted(connectors, key=lambda c: (c.priority, -c.granted_a, c.key)):
        need_w = max((excess[p] for p in c.phases), default=0.0)
        if need_w <= 1e-9 or c.granted_a <= 0:
            continue
        # reducing the grant only helps as far as the connector actually draws
        effective = c.granted_a if c.drawing_a is None else min(c.granted_a, c.drawing_a)
        cut_a = need_w / voltage_v
        new_a = max(0.0, effective - cut_a)
        if 0 < new_a < c.min_a:
            new_a = 0.0
        new_a = min(new_a, c.granted_a)
        if new_a >= c.granted_a - 1e-9 and effective >= c.granted_a - 1e-9:
            continue
        freed_w = max(0.0, effective - new_a) * voltage_v
        out[c.key] = round(new_a, 1) if new_a > 0 else 0.0
        for p in c.phases:
            excess[p] = max(0.0, excess[p] - freed_w)
        if max(excess) <= 1e-9:
            break
    return out


def regrant(
    load_w: Sequence[float], limit_w: Sequence[float], margin_w: float, voltage_v: float,
    connectors: Sequence[Connector],
) -> dict[str, float]:
    """New grants (A) for connectors held below their plan, raised as far as the measured room allows.

    The room assumes each raised connector draws its whole increase on each of its phases.
    """
    room = [limit_w[p] - margin_w - load_w[p] for p in range(3)]
    out: dict[str, float] = {}
    for c in sorted(connectors, key=lambda c: (-c.priority, c.granted_a, c.key)):
        gap_a = c.plan_a - c.granted_a
        if gap_a <= 1e-9:
            continue
        room_a = min((room[p] for p in c.phases), default=0.0) / voltage_v
        if room_a <= 0:
            continue
        new_a = min(c.plan_a, c.granted_a + room_a)
        if new_a < c.min_a:
            if c.plan_a >= c.min_a and c.granted_a + room_a >= c.min_a:
                new_a = c.min_a
            else:
                continue
        if new_a < c.plan_a:
            new_a = math.floor(new_a * 10 + 1e-9) / 10   # round down to 0.1 A
        if new_a <= c.granted_a + 1e-9:
            continue
        out[c.key] = new_a
        for p in c.phases:
            room[p] -= (new_a - c.granted_a) * voltage_v
    return out
