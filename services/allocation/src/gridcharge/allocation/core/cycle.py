"""One planning cycle of the allocator (pure, no I/O; time passed in).

1. expire unanswered commands and ended external windows; capacity per node, phase and slot
   (`budget.node_capacity`);
2. the grid-aware fallback schedules (`fallbacks.py`); which nodes are busy (their capacity held a car back);
3. the plan (`LpPlanner`) of every session of a plannable station, on the capacity left after what is
   reserved anyway: the worst case of stations not planned, the floor of idle ones, and — outside busy
   nodes — the floor of the charging ones, given to their cars as a base;
4. the desired station caps (the per-phase sum of each station's grants, capped by the limiter);
5. the **calm control law** (`control_targets`): a station keeps what it holds unless the change is worth a
   flash write — a raise only by ``raise_min_step_a``, not within ``raise_hold_s`` of a lowering and within
   the write budget; a lowering the budget does not need only under a busy node (someone gets the room),
   not right after a limiter cut there (the cut already shed what was measured: no second round), and by
   ``lower_min_step_a``; a renewal (one per lease and epoch) takes the desired value, and as it is a write
   anyway a renewal that wants more counts as a raise (the room it needs is freed now), and waits, in the
   first half of its window, for a lowering on its way to free that room (one write, not a renewal at the
   old value and a raise an interval later);
6. the budget fit (`budget.fit_caps`) at every moment of the lease's lifetime: lowerings always, raises as
   far as the worst case of every station fits; over capacity, stations are lowered whatever they hold;
7. commands: what changes, or renews a lease still wanted (`issuer.py`); fallbacks that must change.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from gridcharge.allocation.core import profiles as P
from gridcharge.allocation.core.budget import Capacity, fit_caps, node_capacity, node_draw_w, station_phases
from gridcharge.allocation.core.failsafe import LEASE_KEY, Sent
from gridcharge.allocation.core.issuer import ProfileCommand, StationCaps
from gridcharge.allocation.core.model import (
    BindingConstraint,
    Evse,
    NodeCapacity,
    Plan,
    PlannerConfig,
    PlanningProblem,
    Session,
    SlotGrid,
)
from gridcharge.allocation.core.prices import plan_prices
from gridcharge.allocation.core.sessions import SessionState, session_key
from gridcharge.shared.topology import PHASES, Topology

if TYPE_CHECKING:  # the allocator hosts the cycle; only its type is needed here
    from gridcharge.allocation.core.allocator import Allocator

log = logging.getLogger(__name__)

GUESSED_DEPARTURE_S = 2 * 3600.0  # planning horizon of a car whose departure nobody gave (s)

Moments = tuple[list[float], dict[str, np.ndarray], dict[str, float | np.ndarray]]


@dataclass
class Explanation:
    """Why a session gets what it gets: the grant, the binding constraint and its source."""

    session_id: str
    granted_a: float
    planned_a: float
    binding: BindingConstraint | None
    clamped_by: str = ""  # "" | limiter | budget | failsafe | held (a raise waiting for the write budget)


@dataclass(frozen=True)
class Outlook:
    """What the plan holds for one session, base included."""

    current_a: list[float]
    power_w: list[float]
    planned_wh: float
    shortfall_wh: float
    will_complete: bool


@dataclass
class PlanResult:
    """Outcome of one planning cycle."""

    at: datetime
    plan: Plan | None
    capacity: Capacity
    slot_starts: list[float]
    explanations: dict[str, Explanation] = field(default_factory=dict)
    station_caps_a: dict[str, float] = field(default_factory=dict)
    base_a: dict[str, float] = field(default_factory=dict)  # per session key: share of the station floor
    commands: list[ProfileCommand] = field(default_factory=list)
    deferred: dict[str, int] = field(default_factory=dict)  # raises held back, by reason (hold|interval|budget)
    error: str = ""


def station_cap_for(topology: Topology, station_id: str, grants: dict[str, float]) -> float:
    """Per-phase station cap that lets every EVSE of the station draw its grant (A)."""
    st = topology.station_by_id[station_id]
    per_phase = [0.0, 0.0, 0.0]
    for e in st.evses:
        g = grants.get(session_key(station_id, e.id), 0.0)
        for ph in st.evse_phases(e.id):
            per_phase[PHASES.index(ph)] += g
    return max(per_phase)


def wants_energy(s: SessionState, now: datetime) -> bool:
    """False for a car that is done: its known need is met, or it stopped drawing while granted."""
    if s.remaining_wh <= 0 and not s.need_guessed:
        return False
    cap = s.draw_limit_a(now)
    return cap is None or cap > 0


def one_phase_stations(alloc: Allocator, by_station: dict[str, list[SessionState]]) -> set[str]:
    """Stations whose lease goes in W on one phase: one EVSE on several phases, accepting W, and a car there
    that draws on one phase (measured or reported). In A the station cap binds every phase, so the budget
    reserves it three times for a car that uses one; a W limit bounds the total, which such a car can only
    draw on L1 (`profiles.phase_weights`)."""
    if not alloc.cfg.one_phase_w_leases:
        return set()
    out = set()
    for sid, ss in by_station.items():
        st = alloc.topology.station_by_id[sid]
        if len(st.evses) == 1 and len(st.phase_map) > 1 and ss and all(s.phases == 1 for s in ss):
            if P.RATE_W in alloc.caps.get(sid, StationCaps()).allowed_rate_units:
                out.add(sid)
    return out


def run(alloc: Allocator, now_dt: datetime) -> PlanResult:
    """One planning cycle (module docstring)."""
    cfg, topo = alloc.cfg, alloc.topology
    now = now_dt.timestamp()
    for led in alloc.ledgers.values():
        led.expire(now, cfg.command_timeout_s)
    for k in [k for k, e in alloc.external.items() if e.valid_to <= now]:
        del alloc.external[k]  # windows that ended
    # the limiter's cuts hold until a regular cycle re-optimises (the plan meanwhile stays within them)
    for key in [k for k, t in alloc.limiter_at.items() if now - t >= cfg.limiter_hold_s]:
        alloc.limiter_at.pop(key, None)
        alloc.limiter_a.pop(key, None)
    T = max(1, cfg.horizon_slots)
    slot_starts = [now + k * cfg.slot_s for k in range(T)]
    capacity = node_capacity(topo, alloc.node_inputs, alloc.external.values(), now, slot_starts, cfg.slot_s)
    by_station: dict[str, list[SessionState]] = {}
    for s in alloc.book.sessions.values():
        by_station.setdefault(s.station_id, []).append(s)
    alloc.charging = {sid for sid, ss in by_station.items() if any(wants_energy(x, now_dt) for x in ss)}
    alloc.issuer.one_phase = one_phase_stations(alloc, by_station)
    plannable = {sid for sid, led in alloc.ledgers.items() if not led.in_failsafe(now, cfg.failsafe_hold_s)}
    planned = {sid for sid in by_station if sid in plannable}
    for n in busy_nodes(alloc):
        alloc.busy_at[n] = now
    busy = alloc.busy(now)
    under_busy = {sid for sid in alloc.ledgers if any(n in busy for n in topo.station_path(sid))}
    prio = compute_fallbacks(alloc, now)
    result = PlanResult(now_dt, None, capacity, slot_starts)
    end = cfg.leases.lease_end(now, lowered=False)
    moments, cap_k, wc_k = budget_moments(alloc, now, end, capacity, slot_starts)
    wc_max = {sid: np.max(np.asarray(a), axis=-1) for sid, a in wc_k.items()}  # [phases] A: the highest per phase

    # the plan
    sessions = [s for sid in sorted(planned) for s in by_station[sid]]
    plan_now: dict[str, float] = {}
    if sessions:
        fixed_w = fixed_draw_w(alloc, slot_starts, plannable, planned - under_busy, wc_max)
        try:
            plan, base = solve(alloc, sessions, capacity, fixed_w, now_dt, T, under_busy)
            result.plan, result.base_a = plan, base
            for s in sessions:
                key = session_key(s.station_id, s.evse_id)
                plan_now[key] = base.get(key, 0.0) + float(plan.current_a[plan.row(s.session_id), 0])
        except Exception as exc:  # a planner failure must not stop the fallbacks and leases from working
            log.exception("planner failed; holding sessions at their fallback")
            result.error = f"{type(exc).__name__}"
            for s in sessions:
                plan_now[session_key(s.station_id, s.evse_id)] = 0.0
    alloc.plan_a = dict(plan_now)
    want = {key: min(a, alloc.limiter_a.get(key, math.inf)) for key, a in plan_now.items()}

    # desired caps: planned stations their grants, idle ones (with a lease) their fallback
    desired: dict[str, float] = {sid: station_cap_for(topo, sid, want) for sid in planned}
    for sid in plannable - planned:
        led = alloc.ledgers[sid]
        if abs(led.held_a(now) - led.floor_a(now)) > 0.05 or led.worst_case_a(now) > led.floor_a(now) + 1e-9:
            # a lease still held: back to what the fallback will be (released under a busy node)
            desired[sid] = min(led.floor_a(now), alloc.fallbacks.target.get(sid, [(now, led.floor_a(now))])[0][1])
    targets, keep, due, patient = control_targets(alloc, now, desired, planned, under_busy, result.deferred)
    floors = lease_floors(alloc, now, end, moments, targets, keep)
    order = sorted(
        targets, key=lambda sid: (-prio.get(sid, 0), -sum(s.remaining_wh for s in by_station.get(sid, [])), sid)
    )
    band = {n.id: alloc.raise_band_w(n.id) for n in topo.nodes}
    lower_order = lowering_order(alloc, now, targets, prio)
    weights = {sid: alloc.issuer.lease_weights(sid) for sid in targets}
    approved = fit_caps(
        topo,
        cap_k,
        wc_k,
        targets,
        order,
        floor_a=floors,
        keep=keep,
        raise_headroom_w=band,
        lower_order=lower_order,
        settled_a=settled_moments(alloc, moments),
        lease_weights=weights,
    )
    result.station_caps_a = dict(approved)
    waiting = renewals_waiting_for_room(alloc, now, targets, approved, patient)
    # (what the cars want, not only what they got: a restore that would hold a car back re-releases at once)
    still_busy(
        alloc,
        now,
        {n: c.min(axis=1) for n, c in cap_k.items()},
        {
            **wc_max,
            **{
                k: np.maximum(max(a, desired.get(k, 0.0)) * np.asarray(weights[k]), float(np.max(floors[k])))
                for k, a in approved.items()
            },
        },
    )

    # commands
    for sid in sorted(targets):
        led = alloc.ledgers[sid]
        if not led.online:
            continue
        held = led.held_a(now)
        cmd = (
            None
            if sid in waiting
            else station_command(alloc, sid, targets[sid], approved.get(sid, 0.0), now, sid in due, sid in under_busy)
        )
        in_force = held
        if cmd is not None:
            result.commands.append(cmd)
            in_force = P.profile_limit_a(cmd.payload, alloc.target(sid))
        if sid in planned:
            result.commands += session_grants(
                alloc, sid, by_station[sid], want, desired[sid], in_force, now, cmd is not None
            )
            explain(alloc, result, by_station[sid], want, plan_now, desired[sid], in_force, targets[sid])
    for sid in sorted(by_station):
        if sid in planned:
            continue
        for s in by_station[sid]:
            why = "failsafe:" + (alloc.ledgers[sid].last_failure or "offline")
            node = topo.station_by_id[sid].node
            result.explanations[s.session_id] = Explanation(
                s.session_id, 0.0, 0.0, BindingConstraint(node, -1, 0, why), "failsafe"
            )
    result.commands += fallback_commands(alloc, now)
    alloc.last = result
    return result


def lease_floors(
    alloc: Allocator, now: float, end: float, moments: list[float], targets: dict[str, float], keep: set[str]
) -> dict[str, float | np.ndarray]:
    """Per station, what it may draw whatever cap it gets, at each of ``moments`` (A): nothing while the lease
    sent now surely overrides the fallback (a lease below the fallback outlives the others, leases.py), the
    fallback after that."""
    pol = alloc.cfg.leases
    skew, lowered_end = pol.clock_skew_s, pol.lease_end(now, lowered=True)
    floors: dict[str, float | np.ndarray] = {}
    for sid, t in targets.items():
        led = alloc.ledgers[sid]
        until = lowered_end if t < led.floor_max_a(now, end) - 1e-9 and sid not in keep else end
        if until - skew >= moments[-1]:
            floors[sid] = 0.0
        else:
            floors[sid] = np.array([0.0 if m < until - skew else led.floor_worst_a(m) for m in moments])
    return floors


def lowering_order(alloc: Allocator, now: float, stations: Iterable[str], prio: dict[str, int]) -> list[str]:
    """Who goes down first over capacity: the lowest priority, within it the station holding the most (a trim
    of the largest grant rather than one car stopped)."""
    return sorted(stations, key=lambda sid: (prio.get(sid, 0), -alloc.ledgers[sid].held_a(now), sid))


def safety_caps(alloc: Allocator, now: float, node_id: str, caps: dict[str, float]) -> dict[str, float]:
    """Station caps (A) under ``node_id`` the budget fit of the next cycle would lower, given the limiter's
    ``caps``: the limiter sends them with its cut, so the re-plan that follows has nothing left to cut.

    The limiter sheds the measured excess; the fit keeps Σ worst case (what every station may draw under its
    lease or fallback) within the capacity the same reading implies, at every moment of a lease sent now.
    Idle stations and cars drawing less than their grant make the worst case exceed the measured load, and
    without this the cycle a second later lowered a second round ("safety").
    """
    cfg, topo = alloc.cfg, alloc.topology
    T = max(1, cfg.horizon_slots)
    slot_starts = [now + k * cfg.slot_s for k in range(T)]
    capacity = node_capacity(topo, alloc.node_inputs, alloc.external.values(), now, slot_starts, cfg.slot_s)
    end = cfg.leases.lease_end(now, lowered=False)
    moments, cap_k, wc_k = budget_moments(alloc, now, end, capacity, slot_starts)
    under = [
        sid
        for sid, led in alloc.ledgers.items()
        if led.online and not led.in_failsafe(now, cfg.failsafe_hold_s) and node_id in topo.station_path(sid)
    ]
    targets = {sid: min(caps.get(sid, math.inf), alloc.ledgers[sid].held_a(now)) for sid in under}
    keep = {sid for sid in under if sid not in caps}
    floors = lease_floors(alloc, now, end, moments, targets, keep)
    prio = station_priorities(alloc)
    approved = fit_caps(
        topo,
        cap_k,
        wc_k,
        targets,
        [],
        floor_a=floors,
        keep=keep,
        lower_order=lowering_order(alloc, now, under, prio),
        settled_a=settled_moments(alloc, moments),
        lease_weights={sid: alloc.issuer.lease_weights(sid) for sid in targets},
    )
    # as the profile will carry it: rounded down, 0 below the 6 A minimum
    return {sid: P.quantise_a(a) for sid, a in approved.items() if P.quantise_a(a) < targets[sid] - 0.05}


def current_lease(alloc: Allocator, sid: str) -> Sent | None:
    """The station-cap lease a renewal would extend: the newest in flight, else the accepted one."""
    return alloc.issuer.lease_in_flight(sid) or alloc.ledgers[sid].accepted.get(LEASE_KEY)


def control_targets(
    alloc: Allocator,
    now: float,
    desired: dict[str, float],
    planned: set[str],
    under_busy: set[str],
    deferred: dict[str, int],
) -> tuple[dict[str, float], set[str], set[str], set[str]]:
    """The calm control law (module docstring, step 5): per station the cap to aim for, the stations that
    keep what they hold, those whose lease is due for renewal, and of those the ones whose renewal may still
    wait (the first half of the renewal window)."""
    pol, wp, log_ = alloc.cfg.leases, alloc.cfg.writes, alloc.issuer.writes
    hold = alloc.cfg.limiter_hold_s
    cut = {n for n, t in alloc.cut_at.items() if now - t < hold}
    targets: dict[str, float] = {}
    keep: set[str] = set()
    due: set[str] = set()
    patient: set[str] = set()
    renew: dict[str, bool] = {}
    for sid in desired:
        cur = current_lease(alloc, sid)
        lowered = cur is not None and pol.is_lowered_end(cur.valid_until)
        renew[sid] = cur is not None and now < cur.valid_until and pol.renewal_due(cur.valid_until, now, lowered)
        if renew[sid] and cur is not None and pol.renewal_may_wait(cur.valid_until, now, lowered):
            patient.add(sid)
    raising: set[str] = set()  # nodes under which a raise goes out now: room made there is used at once
    for sid, d in desired.items():
        held = alloc.ledgers[sid].held_a(now)
        d = P.quantise_a(d)
        # a renewal is a write anyway: one that wants more takes the room as a raise would
        if (
            sid in planned
            and d - held >= wp.raise_min_step_a - 1e-9
            and (renew[sid] or not log_.why_not_raise(sid, now))
        ):
            raising.update(alloc.topology.station_path(sid))
    for sid, d in desired.items():
        led = alloc.ledgers[sid]
        held = led.held_a(now)
        d = P.quantise_a(d)
        floor_now = led.floor_a(now)
        if renew[sid] and abs(d - floor_now) > 0.05:
            due.add(sid)
            targets[sid] = d  # one write anyway: it takes the desired value
            continue
        t = held
        path = alloc.topology.station_path(sid)
        if d < held - 0.05:
            calm = any(n in cut for n in path)
            # a lowering the budget does not need goes out only when a raise under the same busy node takes
            # the room now (else a car finishing its last kWh would be written down minute by minute)
            useful = sid in under_busy and any(n in raising for n in path)
            if useful and not calm and held - d >= wp.lower_min_step_a - 1e-9:
                t = d
        elif d > held + 0.05 and sid in planned and d - held >= wp.raise_min_step_a - 1e-9:
            why = log_.why_not_raise(sid, now)
            if why:
                deferred[why] = deferred.get(why, 0) + 1
            else:
                t = d
        targets[sid] = t
        if t == held:
            keep.add(sid)
    return targets, keep, due, patient & due


def renewals_waiting_for_room(
    alloc: Allocator, now: float, targets: dict[str, float], approved: dict[str, float], patient: set[str]
) -> set[str]:
    """Due renewals that get less than they want only because room under their node is being freed (a
    lowering sent this cycle or still unanswered): they are written once that room counts, a second or so
    later, instead of now at the old value (which would make the raise wait ``min_interval_s``)."""
    topo = alloc.topology
    freeing: set[str] = set()
    for sid, led in alloc.ledgers.items():
        held = led.held_a(now)
        # a lowering is wanted, or the worst case is above what it holds: a lowering in flight or of unknown fate
        if targets.get(sid, held) < held - 0.05 or any(
            w > h + 0.05 for w, h in zip(led.worst_case_ph(now), led.held_ph(now), strict=True)
        ):
            freeing.update(topo.station_path(sid))
    out: set[str] = set()
    for sid in patient:
        held, a = alloc.ledgers[sid].held_a(now), P.quantise_a(approved.get(sid, 0.0))
        if held - 0.05 <= a < targets[sid] - 0.05 and any(n in freeing for n in topo.station_path(sid)):
            out.add(sid)
    return out


def station_command(
    alloc: Allocator, sid: str, target: float, approved: float, now: float, due: bool, busy: bool
) -> ProfileCommand | None:
    """The station-cap lease to send, if any: a lowering (at once), a raise, or a renewal still wanted."""
    led = alloc.ledgers[sid]
    held = led.held_a(now)
    a = P.quantise_a(approved)  # as the profile will carry it: 0 below the 6 A minimum
    fly = alloc.issuer.lease_in_flight(sid)
    if fly is not None and abs(fly.limit_at(now) - a) < 0.05 and not due:
        return None  # the same change is on its way
    if a < held - 0.05:
        if due and not busy and abs(a - led.floor_a(now)) < 0.05 and a >= target - 0.05:
            return None  # nobody needs it back now: the lease lapses to the fallback at its end
        return alloc.issuer.station_lease(sid, a, now, "safety" if a < target - 0.05 else "lower")
    if a > held + 0.05 and (due or a - held >= alloc.cfg.writes.raise_min_step_a - 1e-9):
        return alloc.issuer.station_lease(sid, a, now, "renewal" if due else "raise")
    if due and abs(a - led.floor_a(now)) > 0.05:
        return alloc.issuer.station_lease(sid, a, now, "renewal")
    return None


def session_grants(
    alloc: Allocator,
    sid: str,
    sessions: list[SessionState],
    want: dict[str, float],
    desired_cap: float,
    in_force: float,
    now: float,
    station_written: bool,
) -> list[ProfileCommand]:
    """Record each session's grant; at a station with several EVSEs, split the station cap with TxProfiles."""
    scale = in_force / desired_cap if desired_cap > 1e-9 and in_force < desired_cap - 1e-9 else 1.0
    multi = len(alloc.topology.station_by_id[sid].evses) > 1
    out: list[ProfileCommand] = []
    for s in sessions:
        key = session_key(s.station_id, s.evse_id)
        if not multi:
            alloc.set_grant(key, in_force, now)
            continue
        g = P.quantise_a(want.get(key, 0.0) * scale, min_a=s.min_current_a)
        g = min(g, in_force)
        sent = alloc.issuer.tx_sent_a.get(key)
        alloc.set_grant(key, g, now)
        if sent is None or g < sent - 0.05 or (abs(g - sent) >= 0.05 and station_written):
            out.append(alloc.issuer.tx_profile(s, g, now, "lower" if sent is not None and g < sent else "raise"))
    return out


def explain(
    alloc: Allocator,
    result: PlanResult,
    sessions: list[SessionState],
    want: dict[str, float],
    plan_now: dict[str, float],
    desired_cap: float,
    in_force: float,
    target: float,
) -> None:
    for s in sessions:
        key = session_key(s.station_id, s.evse_id)
        binding = None
        if result.plan is not None:
            v = result.plan.verdicts.get(s.session_id)
            binding = v.binding if v else None
        clamped = ""
        if key in alloc.limiter_a and alloc.limiter_a[key] < plan_now.get(key, 0.0) - 1e-9:
            clamped = "limiter"
        if in_force < min(desired_cap, target) - 0.05:
            clamped = "budget"
        elif in_force < desired_cap - 0.05 and target < desired_cap - 0.05:
            clamped = "held"
        lim_a, lim_src = alloc.station_limit(s.station_id, s.evse_id, result.at.timestamp())
        if lim_src and plan_now.get(key, 0.0) >= lim_a - 0.05 and (binding is None or binding.node_id.startswith("<")):
            # held at the station's own external limit (an EMS or the grid operator via NotifyChargingLimit):
            # that is the binding constraint, with its source, not the car or the departure
            binding = BindingConstraint(s.station_id, -1, 0, lim_src)
        result.explanations[s.session_id] = Explanation(
            s.session_id, alloc.grant_a.get(key, in_force), plan_now.get(key, 0.0), binding, clamped
        )


def station_priorities(alloc: Allocator) -> dict[str, int]:
    """Each station's highest session priority (stations without a session: absent)."""
    prio: dict[str, int] = {}
    for s in alloc.book.sessions.values():
        prio[s.station_id] = max(prio.get(s.station_id, s.priority), s.priority)
    return prio


def compute_fallbacks(alloc: Allocator, now: float) -> dict[str, int]:
    """The fallback schedules (`fallbacks.py`) for the capacity the latest readings leave, over the horizon;
    returns each station's highest session priority (what the schedules favour)."""
    cfg, topo = alloc.cfg, alloc.topology
    step = cfg.slot_s
    t0 = math.floor(now / step) * step
    starts = [t0 + k * step for k in range(cfg.horizon_slots + 1)]
    prio = station_priorities(alloc)
    alloc.fallbacks.compute(
        now,
        node_capacity(topo, alloc.node_inputs, alloc.external.values(), now, starts, step),
        starts,
        alloc.charging,
        prio,
        alloc.busy(now),
    )
    return prio


def limiter_fallbacks(alloc: Allocator, now: float, node_id: str) -> list[ProfileCommand]:
    """The fallbacks under ``node_id`` that the reading the limiter acts on makes too high, lowered in the same
    action: if the allocator died now Σ fallbacks must still fit the base load that reading implies (and idle
    stations under a node that holds cars back are released), so "a lower one at once" is now, not the next
    cycle a second later. Raises are left to the cycle."""
    compute_fallbacks(alloc, now)
    hold = alloc.cfg.failsafe_hold_s
    out = []
    for sid, led in alloc.ledgers.items():
        if node_id not in alloc.topology.station_path(sid) or not led.online or not led.fallback_installed:
            continue
        if led.failed_at is not None and now - led.failed_at < hold:
            continue
        if alloc.fallbacks.outdated(led, now, alloc.target(sid), sid in alloc.charging) == "lower":
            out.append(alloc.fallback_command(sid, now, "limiter"))
    return out


def fallback_commands(alloc: Allocator, now: float) -> list[ProfileCommand]:
    """Fallbacks never installed (rejected, lost) are retried once the hold is over; outdated ones replaced:
    a lower one at once, a higher one once it fits next to what the others may draw now (a car that arrives
    at a released station gets its floor back as soon as the lowering of the others made room for it)."""
    out = []
    hold = alloc.cfg.failsafe_hold_s
    topo = alloc.topology
    wc: dict[str, list[float]] | None = None
    for sid, led in alloc.ledgers.items():
        in_flight = alloc.issuer.fallback_in_flight(sid)
        held = led.failed_at is not None and now - led.failed_at < hold
        if not led.online or held:
            continue
        if not led.fallback_installed and not in_flight:
            out.append(alloc.fallback_command(sid, now, "retry"))
            continue
        why = (
            alloc.fallbacks.outdated(led, now, alloc.target(sid), sid in alloc.charging)
            if led.fallback_installed
            else ""
        )
        if why == "raise":
            if wc is None:
                wc = alloc.worst_case_ph(now)
            new = {**wc, sid: [max(x, alloc.fallbacks.value_now(sid, now)) for x in wc[sid]]}
            cap = alloc.capacity_now(now)
            draw = node_draw_w(topo, new)
            if any(np.any(draw[n] > cap[n] + 1e-6) for n in topo.station_path(sid)):
                continue  # not yet: the others' lowering must be accepted first
            wc = new
        if why:
            out.append(alloc.fallback_command(sid, now, "schedule"))
    return out


def fixed_draw_w(
    alloc: Allocator, slot_starts: list[float], plannable: set[str], based: set[str], wc: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """[3, T] W per node reserved before planning: the worst case of stations not plannable, the floor of
    idle ones and of the charging stations in ``based`` (their cars get it as a base).

    A floor that changes over the horizon (a scheduled fallback) counts with its highest value per slot.
    """
    topo = alloc.topology
    T = len(slot_starts)
    step = alloc.cfg.slot_s
    constant: dict[str, float | np.ndarray] = {}
    out = {n.id: np.zeros((3, T)) for n in topo.nodes}
    horizon_end = slot_starts[-1] + step
    charging_stations = {s.station_id for s in alloc.book.sessions.values()}
    for sid, led in alloc.ledgers.items():
        if sid not in plannable:
            constant[sid] = wc[sid]
            continue
        if sid in charging_stations and sid not in based:
            continue  # under a busy node the plan may take a car below its floor
        if not led.floor_steps(slot_starts[0], horizon_end):
            constant[sid] = led.floor_max_a(slot_starts[0], slot_starts[0] + step)
            continue
        per_slot = np.array([led.floor_max_a(ts, ts + step) for ts in slot_starts]) * alloc.voltage_v
        phases = station_phases(topo, sid)
        for nid in topo.station_path(sid):
            for ph in phases:
                out[nid][ph] += per_slot
    for nid, d in node_draw_w(topo, constant).items():
        out[nid] += d[:, None]
    return out


def budget_moments(alloc: Allocator, now: float, end: float, capacity: Capacity, slot_starts: list[float]) -> Moments:
    """The moments of a lease sent now (ending at ``end``) at which the budget may change — now, each later
    slot start where the capacity changes, each step of a fallback, each edge of a lease that may be in
    force (its end ± clock skew) — and at each: the capacity per node ([3, K] W) and each station's worst
    case ([K] A, or one value where it does not change).

    The fit must hold at every moment: a single highest worst case against a single lowest capacity would
    mix moments (a floor that rises when a DSO window ends would count during the window).
    """
    skew = alloc.cfg.leases.clock_skew_s
    # until the new lease may have lapsed, and every lease that may be in force now too: a lease sent when the
    # fallback was higher (so below it, ending late) may outlive the lowered leases of other stations
    hi = end + skew
    for led in alloc.ledgers.values():
        for ls in [led.accepted.get(LEASE_KEY), *led.lease_candidates()]:
            if ls is not None and math.isfinite(ls.valid_until):
                hi = max(hi, ls.valid_until + skew)
    steps = {sid: sorted({*led.change_times(now, hi), *led.lease_edges(now, hi)}) for sid, led in alloc.ledgers.items()}
    times = {now, end - skew}
    for ts in steps.values():
        times.update(ts)
    for k in range(1, len(slot_starts)):
        if slot_starts[k] < hi and any(np.any(c[:, k] != c[:, k - 1]) for c in capacity.w.values()):
            times.add(slot_starts[k])
    moments = sorted(t for t in times if now <= t < hi)
    T = len(slot_starts)
    cols = [min(T - 1, bisect.bisect_right(slot_starts, t) - 1) for t in moments]
    cap = {n: c[:, cols] for n, c in capacity.w.items()}
    wc: dict[str, float | np.ndarray] = {}
    for sid, led in alloc.ledgers.items():
        vals = [led.worst_case_ph(t) for t in (moments if steps[sid] else [now])]
        if all(max(v) == min(v) for v in vals):  # the same on every phase (a lease in A): one value per moment
            wc[sid] = np.array([v[0] for v in vals]) if steps[sid] else vals[0][0]
        else:  # [phases, K] A: a lease in W counts differently per phase (failsafe.Sent.weights)
            wc[sid] = np.array(vals).T
    return moments, cap, wc


def settled_moments(alloc: Allocator, moments: list[float]) -> dict[str, np.ndarray]:
    """Per station with a lease in flight, its worst case at each of ``moments`` once that lease is accepted
    (A): a lowering on its way counts at its new value when the fit checks for over capacity."""
    out: dict[str, np.ndarray] = {}
    for sid, led in alloc.ledgers.items():
        if alloc.issuer.lease_in_flight(sid) is not None:
            vals = [led.settled_worst_case_ph(t) for t in moments]
            # [K] A when the same on every phase, else [phases, K]
            out[sid] = np.array([v[0] for v in vals]) if all(max(v) == min(v) for v in vals) else np.array(vals).T
    return out


def solve(
    alloc: Allocator,
    sessions: list[SessionState],
    capacity: Capacity,
    fixed_w: dict[str, np.ndarray],
    now_dt: datetime,
    T: int,
    under_busy: set[str],
) -> tuple[Plan, dict[str, float]]:
    """Plan the sessions; returns the plan and each session's base (A).

    Outside busy nodes a car gets its share of its station's floor as a base and the planner distributes
    the capacity above all floors (min/max currents shifted down by the base): the floor is reserved there
    anyway. Under a busy node there is no base: the plan may take a car below its floor (a lease below the
    fallback) so that the capacity goes where it is needed. The energy asked stays what the car needs.
    """
    cfg, topo = alloc.cfg, alloc.topology
    per_station: dict[str, int] = {}
    for s in sessions:
        per_station[s.station_id] = per_station.get(s.station_id, 0) + 1
    base: dict[str, float] = {}
    nodes = [
        NodeCapacity(n.id, np.maximum(capacity.w[n.id] - fixed_w[n.id], 0.0), n.parent, capacity.source[n.id])
        for n in topo.nodes
    ]
    evses: dict[str, Evse] = {}
    plan_sessions = []
    current: dict[str, float] = {}
    now = now_dt.timestamp()
    end = cfg.leases.lease_end(now, lowered=False)
    for s in sessions:
        st = topo.station_by_id[s.station_id]
        key = session_key(s.station_id, s.evse_id)
        ev = st.evse(s.evse_id)
        evse_max = min(
            ev.max_current_a or st.max_current_a, st.max_current_a, alloc.station_limit_a(s.station_id, s.evse_id, now)
        )
        max_a = min(s.max_current_a, evse_max)
        cap = s.draw_limit_a(now_dt)
        if cap is not None:  # the car takes less than it was given (taper, full, ...)
            max_a = min(max_a, cap)
        if key in alloc.limiter_a:  # cut by the limiter: planned within the cut until it is released
            max_a = min(max_a, alloc.limiter_a[key])
        b = 0.0
        if s.station_id not in under_busy:
            # the share of the floor the car can count on for the whole lease (a fallback may drop meanwhile)
            floor = alloc.ledgers[s.station_id].floor_min_a(now, end)
            b = max(0.0, min(floor / per_station[s.station_id], max_a))
        base[key] = b
        if key in alloc.grant_a:  # what it holds now, above its base: the plan prefers to keep it
            current[s.session_id] = max(0.0, alloc.grant_a[key] - b)
        # the station cap binds all the EVSE's phases (the budget counts it there), so a car drawing on fewer
        # is planned on all of them with its energy scaled up: the plan reserves what the budget counts and
        # still knows how long the car really needs (a single-phase car takes three times as long)
        wired = len(st.evse_phases(s.evse_id))
        k = wired / max(1, min(s.phases, wired))
        weights: tuple[float, ...] = ()
        if len(st.evses) == 1:
            w = alloc.issuer.lease_weights(s.station_id)
            if any(abs(x - 1.0) > 1e-9 for x in w):
                # a lease in W: the budget counts the grant per phase as the weights say, whatever phases the
                # car uses; plan it so, with its real energy
                weights, k = w, 1.0
        evses[key] = Evse(
            key,
            tuple(topo.station_path(s.station_id)),
            tuple(PHASES.index(p) for p in st.evse_phases(s.evse_id)),
            max_current_a=max(0.0, evse_max - b),
            min_current_a=max(0.0, ev.min_current_a - b),
            load_weights=weights,
        )
        dep_s = s.departure.timestamp() - now
        if s.departure_guessed:
            # nobody said when the car leaves (OCPP 1.6, no driver input): plan it to be done soon rather than
            # by the site's default departure — a late guess makes the car look lax, and if it leaves early
            # the energy it was waiting for is lost; a rolling horizon, so it never becomes "overdue"
            dep_s = min(dep_s, GUESSED_DEPARTURE_S)
        dep_slot = max(1, math.ceil(dep_s / cfg.slot_s))
        plan_sessions.append(
            Session(
                s.session_id,
                key,
                s.energy_needed_wh * k,
                0,
                dep_slot,
                max(0.0, s.min_current_a - b),
                max(0.0, max_a - b),
                max(1, min(s.phases, wired)) if weights else wired,
                alloc.voltage_v,
                float(s.priority),
                s.delivered_wh * k,
                # nobody gave its need (OCPP 1.6, no driver input): the site default is what it is promised;
                # any capacity no other need can use it may take as well, up to what it draws
                extra_wh=math.inf if s.need_guessed else 0.0,
            )
        )
    problem = PlanningProblem(
        slots=SlotGrid(now_dt, T, cfg.slot_s),
        nodes=nodes,
        evses=list(evses.values()),
        sessions=plan_sessions,
        # the topology's tariff, overridden by external prices (OpenADR): the planner's secondary objective
        price_per_kwh=plan_prices(topo, alloc.prices.values(), now, T, cfg.slot_s),
        config=PlannerConfig(time_limit_s=10.0),
        current_a=current,
    )
    return alloc.planner.plan(problem), base


def still_busy(alloc: Allocator, now: float, cap_w: dict[str, np.ndarray], draw_a: dict[str, np.ndarray]) -> None:
    """Nodes where giving the released idle floors back would not fit next to what the cars now get:
    they stay 'busy' (released) — releasing frees the capacity, so the binding constraint alone would
    restore and release them again every cycle."""
    back: dict[str, float] = {}
    for st in alloc.topology.stations:
        if st.id not in alloc.charging:
            gap = st.fallback_current_a - alloc.ledgers[st.id].floor_a(now)
            if gap > 1e-9:
                back[st.id] = gap
    if not back:
        return
    extra = node_draw_w(alloc.topology, back)
    used = node_draw_w(alloc.topology, draw_a)
    for n, add in extra.items():
        if np.any(add > 0) and np.any(used[n] + add > cap_w[n] + 1e-6):
            alloc.busy_at[n] = now


def busy_nodes(alloc: Allocator) -> set[str]:
    """Nodes whose capacity held a car back in the last plan (its binding constraint, or the budget)."""
    busy: set[str] = set()
    if alloc.last is None:
        return busy
    station_of = {s.session_id: s.station_id for s in alloc.book.sessions.values()}
    for ex in alloc.last.explanations.values():
        b = ex.binding
        if b is not None and b.slot == 0 and b.node_id in alloc.topology.node_by_id:
            busy.add(b.node_id)
        if ex.clamped_by == "budget" and ex.session_id in station_of:
            busy.update(alloc.topology.station_path(station_of[ex.session_id]))
    return busy
