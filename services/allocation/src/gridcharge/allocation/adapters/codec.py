"""Bus messages ⇄ allocator calls: decoding of inputs, encoding of commands and plans."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.allocation.core.allocator import Allocator, PlanResult, ProfileCommand
from gridcharge.allocation.core.budget import ExternalLimitWindow
from gridcharge.allocation.core.sessions import SessionState, session_key
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.plan.v1 import plan_pb2
from gridcharge.shared.topology import PHASES
from gridcharge.station.v1 import station_pb2


def ts(when: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(when)
    return t


def from_ts(t: Timestamp, default: datetime) -> datetime:
    """Timestamp → aware datetime; unset or absurd values give ``default``."""
    if t.seconds <= 0:
        return default
    try:
        return datetime.fromtimestamp(t.seconds + t.nanos / 1e9, UTC)
    except (OverflowError, OSError, ValueError):
        return default


def pv(p: common_pb2.PhaseValues) -> tuple[float, float, float]:
    return (p.l1, p.l2, p.l3)


def meta(producer: str, now: datetime) -> common_pb2.Meta:
    return common_pb2.Meta(producer=producer, produced_at=ts(now))


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
        at = from_ts(ev.occurred_at, now)
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
        dep = from_ts(n.departure_time, now) if n.HasField("departure_time") else None
        if dep is not None and dep <= now:
            dep = None
        out.replan = alloc.book.needs(sid, n.evse_id, dep, n.energy_amount_wh, n.ev_min_current_a,
                                      n.ev_max_current_a, n.phases)
    return out


_ENERGY = "Energy.Active.Import.Register"
_CURRENT = "Current.Import"
_POWER = "Power.Active.Import"


def apply_meter_values(
    alloc: Allocator, mv: station_pb2.MeterValues, now: datetime
) -> tuple[SessionState | None, float, bool]:
    """Feed one meter sample to its session; returns (session, energy delta Wh, whether its learnt draw cap
    changed — the capacity it frees or needs goes to the plan)."""
    energy = None
    currents: list[float] = []
    power_total = None
    power_phases: list[float] = []
    for v in mv.values:
        if not math.isfinite(v.value) or (v.location and v.location not in ("Outlet", "")):
            continue
        if v.measurand == _ENERGY and not v.phase and v.unit in ("Wh", ""):
            energy = v.value
        elif v.measurand == _CURRENT and v.unit in ("A", ""):
            if v.phase in ("", "L1", "L2", "L3", "L1-N", "L2-N", "L3-N"):
                currents.append(v.value)
        elif v.measurand == _POWER and v.unit in ("W", ""):
            if v.phase:
                power_phases.append(v.value)
            else:
                power_total = v.value
    if power_total is None and power_phases:
        power_total = sum(power_phases)
    at = from_ts(mv.sampled_at, now)
    if at > now:
        at = now
    evse = mv.evse_id or 1
    key = session_key(mv.station_id, evse)
    s0 = alloc.book.find(mv.station_id, evse, mv.transaction_id[:64])
    before = s0.delivered_wh if s0 is not None else 0.0
    cap_before = s0.draw_cap_a if s0 is not None else None
    since = alloc.grant_since.get(key)
    s = alloc.book.meter(mv.station_id, evse, mv.transaction_id[:64], at, energy,
                         max(currents) if currents else None, power_total, alloc.grant_a.get(key),
                         datetime.fromtimestamp(since, UTC) if since is not None else None,
                         phases_drawn(currents))
    if s is None:
        return None, 0.0, False
    return s, s.delivered_wh - before, s.draw_cap_a != cap_before


def phases_drawn(currents: list[float]) -> int | None:
    """How many phases a car draws on, from per-phase current samples (A): None when it says nothing
    (no per-phase values, or too little current to tell)."""
    if len(currents) < 2 or max(currents) < 4.0:
        return None
    return sum(1 for c in currents if c >= max(1.0, 0.25 * max(currents)))


def external_limit_window(el: grid_pb2.ExternalLimit, now: datetime) -> ExternalLimitWindow:
    vf = from_ts(el.valid_from, now).timestamp() if el.HasField("valid_from") else now.timestamp()
    vt = from_ts(el.valid_to, now).timestamp() if el.HasField("valid_to") else math.inf
    received = from_ts(el.meta.produced_at, now).timestamp() if el.HasField("meta") else now.timestamp()
    sched = tuple((from_ts(s.start, now).timestamp(), pv(s.limit_w)) for s in el.schedule)
    fb = pv(el.fallback_limit_w) if el.HasField("fallback_limit_w") else pv(el.limit_w)
    return ExternalLimitWindow(el.node_id, el.limit_id[:64] or "default", el.source[:32], vf, vt, pv(el.limit_w),
                               fb, min(received, now.timestamp()), float(max(0, el.stale_after_s)), sched,
                               el.station_id[:48], max(0, el.evse_id))


def station_command(cmd: ProfileCommand, generation: int, producer: str, now: datetime) -> command_pb2.StationCommand:
    return command_pb2.StationCommand(
        meta=common_pb2.Meta(producer=producer, produced_at=ts(now), trace_id=cmd.command_id),
        command_id=cmd.command_id,
        station_id=cmd.station_id,
        generation=generation,
        command_key=cmd.command_key,
        expires_at=ts(cmd.expires_at),
        set_charging_profile=cmd.payload,
    )


def session_plans(alloc: Allocator, res: PlanResult, producer: str) -> list[plan_pb2.SessionPlan]:
    """One SessionPlan per active session from the latest planning cycle."""
    out = []
    for s in alloc.book.sessions.values():
        sp = plan_pb2.SessionPlan(
            meta=meta(producer, res.at), session_id=s.session_id, station_id=s.station_id, evse_id=s.evse_id,
            start=ts(res.at), step_s=int(alloc.cfg.slot_s), energy_needed_wh=s.remaining_wh,
            departure=ts(s.departure), priority=s.priority,
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
            sp.binding.CopyFrom(plan_pb2.BindingConstraint(
                node_id=b.node_id, phase=PHASES[b.phase] if 0 <= b.phase < 3 else "", slot=b.slot,
                source=(ex.clamped_by + ":" if ex.clamped_by and ex.clamped_by not in b.source else "") + b.source))
        elif ex is not None and ex.clamped_by:
            sp.binding.CopyFrom(plan_pb2.BindingConstraint(source=ex.clamped_by))
        out.append(sp)
    return out


def node_plans(alloc: Allocator, res: PlanResult, producer: str) -> list[plan_pb2.NodePlan]:
    out = []
    solve = res.plan.solve_time_s if res.plan is not None else 0.0
    for nid, cap in res.capacity.w.items():
        np_ = plan_pb2.NodePlan(meta=meta(producer, res.at), node_id=nid, start=ts(res.at),
                                step_s=int(alloc.cfg.slot_s), solve_seconds=solve)
        load = res.plan.node_load_w.get(nid) if res.plan is not None else None
        for t in range(cap.shape[1]):
            np_.capacity_w.append(common_pb2.PhaseValues(l1=float(cap[0, t]), l2=float(cap[1, t]), l3=float(cap[2, t])))
            if load is not None:
                np_.planned_load_w.append(common_pb2.PhaseValues(
                    l1=float(load[0, t]), l2=float(load[1, t]), l3=float(load[2, t])))
        out.append(np_)
    return out
