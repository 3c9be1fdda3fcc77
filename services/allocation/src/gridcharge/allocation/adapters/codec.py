"""Bus and store records ⇄ allocator calls: decoding of inputs, encoding of commands and plans.

Timestamps, Meta, per-phase values and the meter sample come from `gridcharge.shared.codec`; what is
allocation's own here is which allocator call a record becomes.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.allocation.core.allocator import Allocator, PlanResult, ProfileCommand
from gridcharge.allocation.core.budget import ExternalLimitWindow
from gridcharge.allocation.core.prices import ExternalPrice, PriceError, PriceInterval, checked
from gridcharge.allocation.core.sessions import SessionState, session_key
from gridcharge.command.v1 import command_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.plan.v1 import plan_pb2
from gridcharge.shared.codec import (
    meta,
    parse_meter_values,
    phase_tuple,
    phase_values,
    timestamp_dt,
    to_timestamp,
)
from gridcharge.shared.topology import PHASES
from gridcharge.shared.validation import bounded_datetime
from gridcharge.station.v1 import station_pb2
from pydantic import BaseModel, Field, model_validator


def message_time(t: Timestamp, now: datetime) -> datetime:
    """When a message says it happened, never after ``now`` (station clocks run ahead); ``now`` when unset."""
    return min(timestamp_dt(t) or now, now)


ONLINE_EVIDENCE_S = 300.0


class Changes:
    """What an input changed: re-plan soon, and commands to send right away."""

    def __init__(self) -> None:
        self.replan = False
        self.commands: list[ProfileCommand] = []
        self.ended: list[SessionState] = []


def apply_station_event(alloc: Allocator, ev: station_pb2.StationEvent, now: datetime) -> Changes:
    """Route one StationEvent to the allocator (unknown stations and payloads are ignored)."""
    out = Changes()
    sid = ev.station_id
    if sid not in alloc.ledgers:
        return out
    t = now.timestamp()
    kind = ev.WhichOneof("payload")
    led = alloc.ledgers[sid]
    if kind not in ("connected", "boot", "disconnected") and not led.online:
        # any recent message proves the link is up (e.g. after our own restart, the Connected is long past)
        at = timestamp_dt(ev.occurred_at) or now
        if abs((now - at).total_seconds()) <= ONLINE_EVIDENCE_S:
            led.online = True
            out.replan = True
    if kind in ("connected", "boot"):
        if kind == "boot":
            alloc.ledgers[sid].rebooted()
        else:
            led.replica = ev.connected.replica_id[:64]
        out.commands += alloc.station_online(sid, t, new_link=kind == "connected")
        out.replan = True
    elif kind == "disconnected":
        out.replan = alloc.station_offline(sid, t, ev.disconnected.replica_id[:64])
    elif kind == "transaction_started":
        m = ev.transaction_started
        s = alloc.book.start(sid, m.evse_id or m.connector_id, m.transaction_id[:64], now, m.meter_start_wh)
        out.replan = s is not None
    elif kind == "transaction_updated":
        m2 = ev.transaction_updated
        alloc.book.update_state(sid, m2.evse_id, m2.transaction_id[:64], m2.charging_state)
    elif kind == "transaction_ended":
        m3 = ev.transaction_ended
        ended = alloc.book.end(sid, m3.evse_id, m3.transaction_id[:64])
        if ended is not None:
            alloc.session_ended(ended)
            out.ended.append(ended)
            out.replan = True
    elif kind == "charging_needs":
        n = ev.charging_needs
        dep = (timestamp_dt(n.departure_time) or now) if n.HasField("departure_time") else None
        if dep is not None and dep <= now:
            dep = None
        out.replan = alloc.book.needs(
            sid, n.evse_id, dep, n.energy_amount_wh, n.ev_min_current_a, n.ev_max_current_a, n.phases
        )
    elif kind == "priority_charging":
        pc = ev.priority_charging
        out.replan = alloc.priority_charging(sid, pc.transaction_id[:64], pc.activated)
    elif kind == "profile_check" and ev.profile_check.mismatches:
        kinds = sorted({m.kind[:20] for m in ev.profile_check.mismatches})
        out.commands += alloc.profile_mismatch(sid, t, ",".join(kinds))
        out.replan = True
    return out


def apply_meter_values(
    alloc: Allocator, mv: station_pb2.MeterValues, now: datetime
) -> tuple[SessionState | None, float, bool]:
    """Feed one meter sample to its session; returns (session, energy delta Wh, whether its learnt draw cap
    changed — the capacity it frees or needs goes to the plan). The session takes the energy register, the
    highest phase current and the total power of the sample (a NaN/inf value is left out, the rest counts)."""
    sample = parse_meter_values(mv.values)
    at = message_time(mv.sampled_at, now)
    evse = mv.evse_id or 1
    key = session_key(mv.station_id, evse)
    s0 = alloc.book.find(mv.station_id, evse, mv.transaction_id[:64])
    before = s0.delivered_wh if s0 is not None else 0.0
    cap_before = s0.draw_cap_a if s0 is not None else None
    since = alloc.grant_since.get(key)
    s = alloc.book.meter(
        mv.station_id,
        evse,
        mv.transaction_id[:64],
        at,
        sample.energy_wh,
        sample.max_current_a,
        sample.power_w,
        alloc.sure_a.get(key),
        datetime.fromtimestamp(since, UTC) if since is not None else None,
        sample.phases_drawn,
    )
    if s is None:
        return None, 0.0, False
    return s, s.delivered_wh - before, s.draw_cap_a != cap_before


def external_limit_window(el: grid_pb2.ExternalLimit, now: datetime) -> ExternalLimitWindow:
    def at_s(t: Timestamp) -> float:
        return (timestamp_dt(t) or now).timestamp()

    vf = at_s(el.valid_from) if el.HasField("valid_from") else now.timestamp()
    vt = at_s(el.valid_to) if el.HasField("valid_to") else math.inf
    received = at_s(el.meta.produced_at) if el.HasField("meta") else now.timestamp()
    sched = tuple((at_s(s.start), phase_tuple(s.limit_w)) for s in el.schedule)
    fb = phase_tuple(el.fallback_limit_w) if el.HasField("fallback_limit_w") else phase_tuple(el.limit_w)
    return ExternalLimitWindow(
        el.node_id,
        el.limit_id[:64] or "default",
        el.source[:32],
        vf,
        vt,
        phase_tuple(el.limit_w),
        fb,
        min(received, now.timestamp()),
        float(max(0, el.stale_after_s)),
        sched,
        el.station_id[:48],
        max(0, el.evse_id),
    )


def external_price(msg: grid_pb2.PriceSignal, now: datetime) -> ExternalPrice:
    """A PriceSignal → ExternalPrice (intervals in time order; an interval without ``end`` is open-ended);
    raises :class:`PriceError` for one the planner cannot use (no start, non-finite or absurd price, overlaps)."""
    if not msg.price_id:
        raise PriceError("price_id missing")
    intervals = []
    for iv in msg.intervals[: 2000 + 1]:
        start = timestamp_dt(iv.start) if iv.HasField("start") else None
        if start is None:
            raise PriceError("an interval has no start")
        end = timestamp_dt(iv.end) if iv.HasField("end") else None
        intervals.append(
            PriceInterval(start.timestamp(), end.timestamp() if end is not None else math.inf, iv.price_per_kwh)
        )
    received = message_time(msg.meta.produced_at, now).timestamp()
    return checked(
        ExternalPrice(
            msg.price_id[:64], msg.source[:32], msg.node_id[:64], msg.currency[:8], tuple(intervals), received
        )
    )


def station_command(cmd: ProfileCommand, generation: int, producer: str, now: datetime) -> command_pb2.StationCommand:
    return command_pb2.StationCommand(
        meta=meta(producer, now, trace_id=cmd.command_id),
        command_id=cmd.command_id,
        station_id=cmd.station_id,
        generation=generation,
        command_key=cmd.command_key,
        expires_at=to_timestamp(cmd.expires_at),
        set_charging_profile=cmd.payload,
    )


def session_plans(alloc: Allocator, res: PlanResult, producer: str) -> list[plan_pb2.SessionPlan]:
    """One SessionPlan per active session from the latest planning cycle."""
    out = []
    for s in alloc.book.sessions.values():
        sp = plan_pb2.SessionPlan(
            meta=meta(producer, res.at),
            session_id=s.session_id,
            station_id=s.station_id,
            evse_id=s.evse_id,
            start=to_timestamp(res.at),
            step_s=int(alloc.cfg.slot_s),
            energy_needed_wh=s.remaining_wh,
            departure=to_timestamp(s.departure),
            priority=s.priority,
        )
        ol = alloc.outlook(res, s)
        if ol is not None:
            sp.current_a.extend(ol.current_a)
            sp.power_w.extend(ol.power_w)
            sp.energy_planned_wh = ol.planned_wh
            sp.will_complete = ol.will_complete
            sp.shortfall_wh = ol.shortfall_wh
        else:
            sp.shortfall_wh = s.remaining_wh
        ex = res.explanations.get(s.session_id)
        if ex is not None and ex.binding is not None:
            b = ex.binding
            sp.binding.CopyFrom(
                plan_pb2.BindingConstraint(
                    node_id=b.node_id,
                    phase=PHASES[b.phase] if 0 <= b.phase < 3 else "",
                    slot=b.slot,
                    source=(ex.clamped_by + ":" if ex.clamped_by and ex.clamped_by not in b.source else "") + b.source,
                )
            )
        elif ex is not None and ex.clamped_by:
            sp.binding.CopyFrom(plan_pb2.BindingConstraint(source=ex.clamped_by))
        out.append(sp)
    return out


def node_plans(alloc: Allocator, res: PlanResult, producer: str) -> list[plan_pb2.NodePlan]:
    out = []
    solve = res.plan.solve_time_s if res.plan is not None else 0.0
    for nid, cap in res.capacity.w.items():
        np_ = plan_pb2.NodePlan(
            meta=meta(producer, res.at),
            node_id=nid,
            start=to_timestamp(res.at),
            step_s=int(alloc.cfg.slot_s),
            solve_seconds=solve,
        )
        load = res.plan.node_load_w.get(nid) if res.plan is not None else None
        for t in range(cap.shape[1]):
            np_.capacity_w.append(phase_values(cap[:, t]))
            if load is not None:
                np_.planned_load_w.append(phase_values(load[:, t]))
        out.append(np_)
    return out


PREFS_KEY = "allocation:preferences"  # store hash: session id -> PreferencesIn JSON


class PreferencesIn(BaseModel):
    """What the driver or operator wants for a session; omitted fields stay as they are. The operator API
    takes it as its body and keeps it in the store (JSON), where every replica reads it before planning."""

    departure: datetime | None = None
    energy_wh: float | None = Field(None, ge=0, le=1e6)
    priority: int | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def _tz(self) -> PreferencesIn:
        bounded_datetime(self.departure, "departure")
        return self


def apply_preference_blob(alloc: Allocator, session_id: str, blob: bytes) -> bool:
    """Apply preferences stored as JSON (tolerant: bad blobs are ignored)."""
    try:
        p = PreferencesIn.model_validate(json.loads(blob))
    except Exception:
        return False
    return alloc.book.set_preferences(session_id, p.departure, p.energy_wh, p.priority) is not None
