"""External charging limits a station reports (2.0.1/2.1 NotifyChargingLimit / ClearedChargingLimit) as
`ExternalLimit`s on `gridcharge.grid.external-limits.v1`, the contract the operator API and DSO adapters
use, so the allocator does not plan power the station will not draw.

The limit binds that station only (an EMS or the grid operator limited it, not the node), so the message
is station-scoped: `station_id`/`evse_id` set, `node_id` the station's node. `limit_w` is per phase:
a current limit times the nominal voltage, a power limit divided by the phases it spans (`numberPhases`,
else the station's phase count); 2.1 per-phase limits (`limit_L2`/`limit_L3`) per phase as given. A 2.1
period without a `limit` (a setpoint) limits nothing; 2.1 `isLocalGeneration` reports extra capacity, not a
limit, and is not counted on. Several schedules combine to their minimum at every moment. One limit
per (station, EVSE, source): its `limit_id` is what ClearedChargingLimit withdraws (an empty window, as
the operator API's delete does).

Pure: the caller passes station facts from the topology and the receive time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gridcharge.gateway.core.mapping import parse_time, text
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import meta, phase_values, to_timestamp

MAX_LIMIT_W = 1e9  # a station limit above this is no limit worth the name (and keeps inf/1e999 off the bus)


@dataclass(frozen=True, slots=True)
class StationFacts:
    station_id: str
    node_id: str
    phases: int  # grid phases the station is connected to (1..3)
    nominal_voltage_v: float


def limit_id(station_id: str, evse_id: int, source: str) -> str:
    """Stable id of a station's limit from one source (<= 64 characters, the allocator's cap)."""
    out = f"{station_id}/{evse_id}/{source}"
    if len(out) <= 64:
        return out
    digest = hashlib.sha256(station_id.encode()).hexdigest()[:24]
    return f"{digest}/{evse_id}/{source}"[:64]


def record_key(msg: grid_pb2.ExternalLimit) -> str:
    """Bus key of a station-scoped limit: node and limit id, so log compaction keeps every station's limit
    (and never a node's own limits) instead of only the newest record of the node."""
    return f"{msg.node_id}/{msg.limit_id}"


PhaseW = tuple[float, float, float]


def _clamp_w(value: Any) -> float:
    v = float(value)
    if not math.isfinite(v):
        v = MAX_LIMIT_W
    return min(max(0.0, v), MAX_LIMIT_W)


def _per_phase_w(period: dict[str, Any], unit: str, facts: StationFacts) -> PhaseW | None:
    """A schedule period's limit per phase (W); None when the period sets no limit (2.1: `limit` is optional
    for setpoint modes). 2.1 `limit_L2`/`limit_L3`: `limit` is then phase L1 (A or W per phase); without them a
    W limit is the sum over the phases it spans (`numberPhases`, else the station's phase count)."""
    if period.get("limit") is None:
        return None
    l1 = _clamp_w(period["limit"])
    per_phase = "limit_L2" in period or "limit_L3" in period
    if per_phase:
        vals = (l1, _clamp_w(period.get("limit_L2", l1)), _clamp_w(period.get("limit_L3", l1)))
    else:
        if unit != "A":
            n = period.get("numberPhases")
            phases = n if isinstance(n, int) and 1 <= n <= 3 else facts.phases
            l1 = l1 / max(1, phases)
        vals = (l1, l1, l1)
    if unit == "A":
        v = facts.nominal_voltage_v
        return (min(vals[0] * v, MAX_LIMIT_W), min(vals[1] * v, MAX_LIMIT_W), min(vals[2] * v, MAX_LIMIT_W))
    return vals


def _steps(
    schedule: dict[str, Any], now: datetime, facts: StationFacts
) -> tuple[datetime, datetime | None, list[tuple[datetime, PhaseW]]]:
    start = parse_time(schedule.get("startSchedule")) or now
    duration = schedule.get("duration")
    end = start + timedelta(seconds=duration) if isinstance(duration, int) and duration > 0 else None
    unit = str(schedule.get("chargingRateUnit", "A"))
    steps = []
    for p in sorted(schedule.get("chargingSchedulePeriod", ()), key=lambda p: int(p.get("startPeriod", 0))):
        at = start + timedelta(seconds=max(0, int(p.get("startPeriod", 0))))
        if end is not None and at >= end:
            break
        w = _per_phase_w(p, unit, facts)
        if w is not None:
            steps.append((at, w))
    return start, end, steps


def _value(steps: list[tuple[datetime, PhaseW]], end: datetime | None, t: datetime) -> PhaseW | None:
    cur = None
    if end is not None and t >= end:
        return None
    for at, w in steps:
        if at <= t:
            cur = w
    return cur


def station_limit(
    facts: StationFacts, payload: dict[str, Any], now: datetime, producer: str
) -> grid_pb2.ExternalLimit | None:
    """NotifyChargingLimit (validated, 2.0.1 or 2.1) -> ExternalLimit; None when it carries no schedule with a
    limit (nothing to budget) or reports local generation (2.1 `isLocalGeneration`: extra capacity, not a
    limitation; not counted on, so the station stays budgeted within its node's own limits)."""
    lim = payload.get("chargingLimit", {})
    if lim.get("isLocalGeneration") is True:
        return None
    schedules = [s for s in payload.get("chargingSchedule") or () if s.get("chargingSchedulePeriod")]
    if not schedules:
        return None
    source = text(lim.get("chargingLimitSource"), 8) or "Other"
    evse_id = int(payload.get("evseId", 0) or 0)
    parts = [p for p in (_steps(s, now, facts) for s in schedules) if p[2]]
    if not parts:
        return None
    changes = sorted(
        {at for _s, _e, steps in parts for at, _w in steps} | {e for _s, e, _steps in parts if e is not None}
    )
    valid_from = min(s for s, _e, _steps in parts)
    ends = [e for _s, e, _steps in parts]
    valid_to = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
    timeline: list[tuple[datetime, PhaseW]] = []
    last: PhaseW | None = None
    for t in changes:
        if valid_to is not None and t >= valid_to:
            break
        values = [v for _s, e, steps in parts if (v := _value(steps, e, t)) is not None]
        # a gap between schedules keeps the last limit (no schedule in force = no information, not no limit)
        w = (min(v[0] for v in values), min(v[1] for v in values), min(v[2] for v in values)) if values else last
        if w is not None and w != last:
            timeline.append((t, w))
            last = w
    if not timeline:
        return None
    first_at, first_w = timeline[0]
    msg = grid_pb2.ExternalLimit(
        node_id=facts.node_id,
        limit_id=limit_id(facts.station_id, evse_id, source),
        source=f"ocpp-{source.lower()}",
        limit_w=phase_values(first_w),
        fallback_limit_w=phase_values(first_w),
        station_id=facts.station_id,
        evse_id=evse_id,
        valid_from=to_timestamp(min(valid_from, first_at)),
    )
    if valid_to is not None:
        msg.valid_to.CopyFrom(to_timestamp(valid_to))
    for at, w in timeline[1:]:
        msg.schedule.add(start=to_timestamp(at), limit_w=phase_values(w))
    msg.meta.CopyFrom(meta(producer, now))
    return msg


def cleared_limits(
    facts: StationFacts, payload: dict[str, Any], evse_ids: list[int], now: datetime, producer: str
) -> list[grid_pb2.ExternalLimit]:
    """ClearedChargingLimit -> withdrawals (empty windows). Without evseId the source's limits on the whole
    station and on each of its EVSEs (`evse_ids`, from the topology) are withdrawn."""
    source = text(payload.get("chargingLimitSource"), 8) or "Other"
    evse = payload.get("evseId")
    targets = [int(evse)] if isinstance(evse, int) and evse > 0 else [0, *evse_ids]
    out = []
    for e in targets:
        msg = grid_pb2.ExternalLimit(
            node_id=facts.node_id,
            limit_id=limit_id(facts.station_id, e, source),
            source=f"ocpp-{source.lower()}",
            station_id=facts.station_id,
            evse_id=e,
            valid_from=to_timestamp(now),
            valid_to=to_timestamp(now),
        )
        msg.meta.CopyFrom(meta(producer, now))
        out.append(msg)
    return out
