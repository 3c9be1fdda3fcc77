"""Fast limiter (seconds): react to measured node load between planning cycles (pure, no I/O).

``lower``: when measured load + margin exceeds a node's limit on a phase, cut the connectors on that
phase back to the planner's margin — lowest priority first, within a priority all capped at one common
level (fair, and one command per station for an overload), to 0 only where all at their minimum is not
enough.
Giving back is the planner's job (after the raise hold of the write budget, `leases.py`): a limiter that
raised again within seconds would write profiles on every swing of the load.

Powers W per grid phase, currents A per phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gridcharge.allocation.core.profiles import MIN_RATE_A, quantise_a

MIN_CURRENT_A = MIN_RATE_A


@dataclass(frozen=True)
class Connector:
    """A charging connector under the node: its grid phases, current grant and the plan's grant."""

    key: str  # station/evse
    phases: tuple[int, ...]  # grid phase indices it loads
    granted_a: float  # what it may draw now (A per phase)
    priority: int = 1
    min_a: float = MIN_CURRENT_A
    drawing_a: float | None = None  # measured, when fresh


def lower(
    load_w: Sequence[float],
    limit_w: Sequence[float],
    margin_w: float,
    voltage_v: float,
    connectors: Sequence[Connector],
    target_margin_w: float | None = None,
) -> dict[str, float]:
    """New grants (A) for the connectors that must go down when load + ``margin_w`` exceeds the limit on a
    phase; they bring it to load + ``target_margin_w`` ≤ limit (the margin the planner works to, so the
    next plan has nothing left to cut).

    Lowest priority first; within a priority every connector is capped at one common level (the largest
    that sheds enough), never below its minimum current; only where even all at their minimum is not
    enough do connectors go to 0, the largest first. A cut only counts as far as the connector draws.
    """
    if all(load_w[p] + margin_w <= limit_w[p] for p in range(3)):
        return {}
    tgt = max(margin_w, margin_w if target_margin_w is None else target_margin_w)
    excess = [max(0.0, load_w[p] + tgt - limit_w[p]) for p in range(3)]
    out: dict[str, float] = {}

    def eff(c: Connector) -> float:
        """What the connector draws now (A): lowering its grant frees only that."""
        return c.granted_a if c.drawing_a is None else min(c.granted_a, c.drawing_a)

    def freed(tier: Sequence[Connector], new: dict[str, float]) -> list[float]:
        got = [0.0, 0.0, 0.0]
        for c in tier:
            w = max(0.0, eff(c) - new[c.key]) * voltage_v
            for p in c.phases:
                got[p] += w
        return got

    def enough(got: Sequence[float]) -> bool:
        return all(got[p] >= excess[p] - 1e-6 for p in range(3))

    for prio in sorted({c.priority for c in connectors}):
        tier = [
            c for c in connectors if c.priority == prio and c.granted_a > 0 and any(excess[p] > 1e-9 for p in c.phases)
        ]
        if not tier:
            continue

        def at_level(level: float, tier: list[Connector] = tier) -> dict[str, float]:
            return {c.key: min(c.granted_a, max(level, c.min_a)) for c in tier}

        new = at_level(0.0)
        if enough(freed(tier, new)):
            lo, hi = 0.0, max(c.granted_a for c in tier)  # the largest level that still sheds enough
            for _ in range(40):
                mid = (lo + hi) / 2
                if enough(freed(tier, at_level(mid))):
                    lo = mid
                else:
                    hi = mid
            new = {k: quantise_a(a, min_a=0.0) for k, a in at_level(lo).items()}
        else:
            # all at their minimum is not enough: stop connectors, the largest draw first
            for c in sorted(tier, key=lambda c: (-eff(c), c.key)):
                new[c.key] = 0.0
                if enough(freed(tier, new)):
                    break
        got = freed(tier, new)
        for c in tier:
            if new[c.key] < c.granted_a - 1e-9:
                out[c.key] = new[c.key]
        excess = [max(0.0, excess[p] - got[p]) for p in range(3)]
        if max(excess) <= 1e-6:
            break
    return out
