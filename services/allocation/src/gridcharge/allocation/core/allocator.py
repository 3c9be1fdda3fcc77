"""The allocation state machine: events in, SetChargingProfile commands out (pure, no I/O).

It keeps the sessions, the profile ledger of every station, the live node inputs and external limits;
``plan`` runs one planning cycle (planner → budget fit → commands), ``limit`` the fast limiter for one
node, ``boot`` the fallback profile for a station. Time comes in as arguments, never from a clock, so
the same code runs live, in simulation and under Hypothesis.
"""

from __future__ import annotations

import bisect
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from gridcharge.allocation.core import profiles as P
from gridcharge.allocation.core.budget import (
    Capacity,
    ExternalLimitWindow,
    NodeInputs,
    fit_caps,
    node_capacity,
    node_draw_w,
    station_phases,
)
from gridcharge.allocation.core.failsafe import FALLBACK_KEY, LeaseState, Sent, StationLedger
from gridcharge.allocation.core.limiter import Connector, lower, regrant
from gridcharge.allocation.core.model import (
    BindingConstraint,
    Evse,
    NodeCapacity,
    Plan,
    Planner,
    PlannerConfig,
    PlanningProblem,
    Session,
    SlotGrid,
)
from gridcharge.allocation.core.sessions import TAPER_MARGIN_A, SessionBook, SessionState, session_key
from gridcharge.command.v1 import command_pb2
from gridcharge.shared.topology import PHASES, Topology

log = logging.getLogger(__name__)

FALLBACK_RELAX_S = 900.0   # a fallback schedule is raised again at most this often (s); lowered at once


@dataclass(frozen=True)
class AllocatorConfig:
    """Timing and tuning of the allocator (seconds, A)."""

    slot_s: float = 900.0
    horizon_slots: int = 96              # 24 h of 15-min slots
    plan_interval_s: float = 60.0
    debounce_s: float = 1.0
    lease_s: float = P.DEFAULT_LEASE_S
    renew_fraction: float = P.RENEW_FRACTION
    command_timeout_s: float = 60.0      # no result by then: fate unknown
    failsafe_hold_s: float = 120.0       # a failing station is not planned for this long
    change_threshold_a: float = 0.5      # smaller changes wait for the next renewal
    limiter_margin_pct: float = 2.0      # of the node limit, on top of the measured load
    command_ttl_s: float = 30.0          # a command not sent by then is dropped by the gateway
    release_idle_fallbacks: bool = True  # idle stations under a congested node give their floor to the cars
    limiter_hold_s: float = 60.0         # a limiter cut holds (the plan stays within it) until a cycle this later


@dataclass(frozen=True)
class ProfileCommand:
    """A SetChargingProfile for the gateway (the service adds generation and envelope)."""

    command_id: str
    station_id: str
    command_key: str
    purpose: str                    # fallback | station_lease | tx_lease (metrics label)
    payload: command_pb2.SetChargingProfile
    expires_at: datetime


@dataclass
class StationCaps:
    """What a station said it can do with profiles (StationCapabilities)."""

    allowed_rate_units: tuple[int, ...] = ()
    max_periods: int = 24


@dataclass
class Explanation:
    """Why a session gets what it gets: the grant, the binding constraint and its source."""

    session_id: str
    granted_a: float
    planned_a: float
    binding: BindingConstraint | None
    clamped_by: str = ""        # "" | limiter | budget | failsafe


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
    base_a: dict[str, float] = field(default_factory=dict)      # per session key: share of the station floor
    commands: list[ProfileCommand] = field(default_factory=list)
    error: str = ""


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class Allocator:
    """State and decisions of the allocation service for one topology."""

    def __init__(self, topology: Topology, config: AllocatorConfig | None = None, planner: Planner | None = None,
                 new_id: Callable[[], str] | None = None) -> None:
        from gridcharge.allocation.core.planner import LpPlanner

        self.topology = topology
        self.cfg = config or AllocatorConfig()
        self.planner: Planner = planner or LpPlanner()
        self.new_id = new_id or (lambda: uuid.uuid4().hex)
        self.voltage_v = topology.nominal_voltage_v
        self.book = SessionBook(dict(topology.station_by_id), topology.session_defaults, self.voltage_v)
        self.ledgers = {
            s.id: StationLedger(s.id, s.fallback_current_a, s.max_current_a) for s in topology.stations
        }
        self.caps: dict[str, StationCaps] = {}
        self.node_inputs: dict[str, NodeInputs] = {}
        self.external: dict[tuple[str, str], ExternalLimitWindow] = {}
        self.limiter_a: dict[str, float] = {}          # session key -> limiter ceiling (A)
        self.limiter_at: dict[str, float] = {}         # session key -> when the limiter last cut it (s)
        self.grant_a: dict[str, float] = {}            # session key -> current tx grant (A)
        self.plan_a: dict[str, float] = {}             # session key -> plan grant now (A)
        self.station_cap_a: dict[str, float] = {}      # station -> last station lease cap sent (A)
        self.fallback_target: dict[str, list[tuple[float, float]]] = {}   # station -> [(from s, A)] wanted
        self._stations_charging: set[str] = set()
        self._busy_at: dict[str, float] = {}   # node -> last plan in which its capacity held a car back
        self.last: PlanResult | None = None
        self._known_ids: deque[str] = deque(maxlen=20000)
        self._known_set: set[str] = set()

    # ---------------------------------------------------------------- helpers
    def target(self, station_id: str) -> P.StationProfileTarget:
        st = self.topology.station_by_id[station_id]
        caps = self.caps.get(station_id, StationCaps())
        return P.StationProfileTarget(P.rate_unit_for(caps.allowed_rate_units), len(st.phase_map), self.voltage_v,
                                      max(1, caps.max_periods))

    def _remember(self, command_id: str) -> None:
        if len(self._known_ids) == self._known_ids.maxlen:
            self._known_set.discard(self._known_ids[0])
        self._known_ids.append(command_id)
        self._known_set.add(command_id)

    def _issue(self, station_id: str, purpose_label: str, payload: command_pb2.SetChargingProfile,
               valid_until: float, now: float) -> ProfileCommand:
        prof = payload.profile
        key = P.command_key(payload.evse_id, prof.purpose, prof.stack_level)
        cid = self.new_id()
        self._remember(cid)
        tgt = self.target(station_id)
        sched = P.profile_schedule_a(payload, tgt) if prof.purpose == command_pb2.PROFILE_PURPOSE_STATION_MAX else ()
        self.ledgers[station_id].sent(Sent(cid, key, prof.purpose, payload.evse_id,
                                           P.profile_limit_a(payload, tgt), valid_until, now, sched))
        return ProfileCommand(cid, station_id, key, purpose_label, payload, _ts(now + self.cfg.command_ttl_s))

    # ---------------------------------------------------------------- inputs
    def station_online(self, station_id: str, now: float, new_link: bool = False) -> list[ProfileCommand]:
        """Connected/Boot: the station is reachable; (re)install its fallback (idempotent, fixed id).

        ``new_link``: a new WebSocket connection (Connected). Whatever was in flight on the old one may be
        lost — e.g. sent through a replica that died before the station reconnected elsewhere — so the
        fallback goes out again even if one was sent moments ago.
        """
        led = self.ledgers.get(station_id)
        if led is None:
            return []
        led.online = True
        fb_key = P.command_key(0, command_pb2.PROFILE_PURPOSE_STATION_MAX, P.FALLBACK_STACK)
        if not new_link and any(p.key == fb_key and now - p.sent_at < 5.0 for p in led.pending.values()):
            return []   # Connected and Boot come together: one fallback is enough
        return [self._fallback(station_id, now)]

    def _fallback(self, station_id: str, now: float) -> ProfileCommand:
        payload = self._fallback_payload(station_id, now)
        return self._issue(station_id, "fallback", payload, math.inf, now)

    def _fallback_payload(self, station_id: str, now: float) -> command_pb2.SetChargingProfile:
        """The fallback as it should be installed now: nominal, or the grid-aware schedule of the last plan."""
        st = self.topology.station_by_id[station_id]
        steps = [(t, a) for t, a in self.fallback_target.get(station_id, ()) if t > now]
        first = st.fallback_current_a
        for t, a in self.fallback_target.get(station_id, ()):
            if t <= now:
                first = a
        return P.fallback_profile(first, _ts(now), self.target(station_id), [(_ts(t), a) for t, a in steps])

    def station_offline(self, station_id: str, now: float, replica_id: str = "") -> bool:
        """Disconnected; ignored when it comes from a replica the station already left (late event)."""
        led = self.ledgers.get(station_id)
        if led is None:
            return False
        if replica_id and led.replica and replica_id != led.replica:
            return False
        led.went_offline(now)
        return True

    def capabilities(self, station_id: str, allowed_rate_units: tuple[int, ...], max_periods: int) -> bool:
        """What the station can do; a fallback refused for its unit is retried at once in the right one."""
        led = self.ledgers.get(station_id)
        if led is None:
            return False
        new = StationCaps(tuple(allowed_rate_units), max_periods if max_periods > 0 else 24)
        changed = self.caps.get(station_id) != new
        self.caps[station_id] = new
        if changed and not led.fallback_installed:
            led.failed_at = None
        return changed

    def command_result(self, station_id: str, command_id: str, outcome: int, now: float) -> bool:
        """Apply a result; True when it changes what may be planned (re-plan soon)."""
        led = self.ledgers.get(station_id)
        if led is None:
            return False
        sent = led.result(command_id, outcome, now)
        if sent is None:
            return False
        accepted = outcome == command_pb2.COMMAND_OUTCOME_ACCEPTED
        return not accepted or sent.purpose == command_pb2.PROFILE_PURPOSE_STATION_MAX

    def observe_command(self, station_id: str, command_id: str, payload: command_pb2.SetChargingProfile,
                        sent_at: float) -> bool:
        """A profile command seen on the bus (e.g. sent by the previous leader): count it as in flight."""
        led = self.ledgers.get(station_id)
        if led is None or command_id in self._known_set:
            return False
        self._remember(command_id)
        prof = payload.profile
        valid_until = prof.valid_to.ToSeconds() if prof.HasField("valid_to") else math.inf
        tgt = self.target(station_id)
        sched = P.profile_schedule_a(payload, tgt) if prof.purpose == command_pb2.PROFILE_PURPOSE_STATION_MAX else ()
        led.sent(Sent(command_id, P.command_key(payload.evse_id, prof.purpose, prof.stack_level), prof.purpose,
                      payload.evse_id, P.profile_limit_a(payload, tgt), valid_until, sent_at, sched))
        return True

    def node_load(self, node_id: str, load_w: tuple[float, float, float], base_load_w: tuple[float, float, float],
                  at: float) -> bool:
        if node_id not in self.topology.node_by_id or not all(map(math.isfinite, load_w + base_load_w)):
            return False
        inp = self.node_inputs.setdefault(node_id, NodeInputs())
        if inp.load_at is not None and at < inp.load_at:
            return False
        inp.load_w, inp.base_load_w, inp.load_at = load_w, base_load_w, at
        return True

    def headroom(self, node_id: str, start: float, step_s: float, slots: list[tuple[float, float, float]],
                 sources: list[str], at: float) -> bool:
        if node_id not in self.topology.node_by_id or step_s <= 0 or not slots:
            return False
        if not all(math.isfinite(v) for s in slots for v in s):
            return False
        inp = self.node_inputs.setdefault(node_id, NodeInputs())
        inp.headroom_start, inp.headroom_step_s, inp.headroom_w = start, step_s, slots
        inp.headroom_sources, inp.headroom_at = sources, at
        return True

    def external_limit(self, lim: ExternalLimitWindow) -> bool:
        if lim.node_id not in self.topology.node_by_id:
            return False
        if lim.valid_to <= lim.valid_from:   # an empty window withdraws the limit
            return self.external.pop((lim.node_id, lim.limit_id), None) is not None
        self.external[(lim.node_id, lim.limit_id)] = lim
        return True

    def remove_external_limit(self, node_id: str, limit_id: str) -> bool:
        return self.external.pop((node_id, limit_id), None) is not None

    def session_ended(self, s: SessionState) -> None:
        key = session_key(s.station_id, s.evse_id)
        led = self.ledgers.get(s.station_id)
        if led is not None:
            led.expired.discard(P.command_key(s.evse_id, command_pb2.PROFILE_PURPOSE_TX, P.LEASE_STACK))
        for d in (self.limiter_a, self.grant_a, self.plan_a, self.limiter_at):
            d.pop(key, None)

    def restore_lease(self, station_id: str, cap_a: float, valid_until: float, now: float) -> bool:
        """After a restart: a station-cap lease a previous run may have installed counts until it ends."""
        led = self.ledgers.get(station_id)
        if led is None or not math.isfinite(cap_a) or valid_until <= now:
            return False
        cap_a = min(max(cap_a, 0.0), led.hw_max_a)
        key = P.command_key(0, command_pb2.PROFILE_PURPOSE_STATION_MAX, P.LEASE_STACK)
        cid = f"restored:{station_id}"
        led.uncertain[cid] = Sent(cid, key, command_pb2.PROFILE_PURPOSE_STATION_MAX, 0, cap_a,
                                  min(valid_until, now + self.cfg.lease_s), now)
        return True

    def lease_record(self, station_id: str, now: float) -> tuple[float, float] | None:
        """(worst-case cap A, latest end s) of the station-cap leases that may be in force, for persistence."""
        led = self.ledgers[station_id]
        srcs = [s for s in [*led.accepted.values(), *led.pending.values(), *led.uncertain.values()]
                if s.purpose == command_pb2.PROFILE_PURPOSE_STATION_MAX and math.isfinite(s.valid_until)
                and s.valid_until > now]
        if not srcs:
            return None
        return max(s.cap_a for s in srcs), max(s.valid_until for s in srcs)

    # ---------------------------------------------------------------- worst case
    def worst_case_a(self, now: float) -> dict[str, float]:
        """Per station: the highest per-phase current it may draw now (A)."""
        return {sid: led.worst_case_a(now) for sid, led in self.ledgers.items()}

    def capacity_now(self, now: float) -> dict[str, np.ndarray]:
        """[3] W of EV capacity per node for the current moment."""
        cap = node_capacity(self.topology, self.node_inputs, self.external.values(), now, [now])
        return {n: c[:, 0] for n, c in cap.w.items()}

    # ---------------------------------------------------------------- planning
    def _sessions_by_station(self) -> dict[str, list[SessionState]]:
        out: dict[str, list[SessionState]] = {}
        for s in self.book.sessions.values():
            out.setdefault(s.station_id, []).append(s)
        return out

    def _station_cap_for(self, station_id: str, grants: dict[str, float]) -> float:
        """Per-phase station cap that lets every EVSE of the station draw its grant (A)."""
        st = self.topology.station_by_id[station_id]
        per_phase = [0.0, 0.0, 0.0]
        for e in st.evses:
            g = grants.get(session_key(station_id, e.id), 0.0)
            for ph in st.evse_phases(e.id):
                per_phase[PHASES.index(ph)] += g
        return max(per_phase)

    def plan(self, now_dt: datetime) -> PlanResult:
        """One planning cycle: expire, plan, fit the budget, emit the commands that change anything."""
        cfg = self.cfg
        now = now_dt.timestamp()
        for led in self.ledgers.values():
            led.expire(now, cfg.command_timeout_s)
        for k in [k for k, e in self.external.items() if e.valid_to <= now]:
            del self.external[k]   # windows that ended
        # the limiter's cuts hold until a regular cycle re-optimises (the plan meanwhile stays within them)
        for key in [k for k, t in self.limiter_at.items() if now - t >= cfg.limiter_hold_s]:
            self.limiter_at.pop(key, None)
            self.limiter_a.pop(key, None)
        T = max(1, cfg.horizon_slots)
        slot_starts = [now + k * cfg.slot_s for k in range(T)]
        capacity = node_capacity(self.topology, self.node_inputs, self.external.values(), now, slot_starts,
                                 cfg.slot_s)
        by_station = self._sessions_by_station()
        self._stations_charging = {sid for sid, ss in by_station.items()
                                   if any(self._wants_energy(x, now_dt) for x in ss)}
        plannable = {sid for sid, led in self.ledgers.items()
                     if not led.in_failsafe(now, cfg.failsafe_hold_s)}
        planned_stations = {sid for sid in by_station if sid in plannable}
        # what each station may draw at worst while a lease sent now is in force, at each moment it changes
        cap_fit, wc_k, floors_k = self._budget_moments(now, capacity, slot_starts)
        wc = {sid: float(np.max(a)) for sid, a in wc_k.items()}
        # every station's floor is reserved anyway (a lapsing lease falls back to it), so the planner gets
        # the capacity above the floors and each planned car its share of its station's floor as a base
        fixed_w = self._fixed_draw_w(slot_starts, plannable, wc)
        result = PlanResult(now_dt, None, capacity, slot_starts)
        for n in self._busy_nodes():
            self._busy_at[n] = now
        # a node counts as busy until it has been quiet for FALLBACK_RELAX_S (no release/restore churn)
        busy = {n for n, t in self._busy_at.items() if now - t < FALLBACK_RELAX_S}
        self.fallback_target = self._fallback_targets(now, by_station, busy)

        # 1. the plan
        sessions = [s for sid in sorted(planned_stations) for s in by_station[sid]]
        plan_now: dict[str, float] = {}
        if sessions:
            try:
                plan, base = self._solve(sessions, capacity, fixed_w, now_dt, T)
                result.plan, result.base_a = plan, base
                for s in sessions:
                    key = session_key(s.station_id, s.evse_id)
                    plan_now[key] = base.get(key, 0.0) + float(plan.current_a[plan.row(s.session_id), 0])
            except Exception as exc:   # a planner failure must not stop the fallbacks and leases from working
                log.exception("planner failed; holding sessions at their fallback")
                result.error = f"{type(exc).__name__}"
                for s in sessions:
                    plan_now[session_key(s.station_id, s.evse_id)] = 0.0
        self.plan_a = dict(plan_now)

        # 2. limiter ceilings and the budget fit
        want: dict[str, float] = {}
        for key, a in plan_now.items():
            want[key] = min(a, self.limiter_a.get(key, math.inf))
        desired_station: dict[str, float] = {}
        for sid in planned_stations:
            desired_station[sid] = self._station_cap_for(sid, want)
        for sid in plannable - planned_stations:
            led = self.ledgers[sid]
            if led.worst_case_a(now) > led.floor_a(now) + 1e-9 or sid in self.station_cap_a:
                desired_station[sid] = led.floor_a(now)   # idle: take the lease back down
        order = sorted(desired_station, key=lambda sid: (
            -max((s.priority for s in by_station.get(sid, [])), default=0),
            -sum(s.remaining_wh for s in by_station.get(sid, [])), sid))
        approved = fit_caps(self.topology, cap_fit, wc_k, desired_station, order, floor_a=floors_k)
        result.station_caps_a = dict(approved)
        floors = {sid: float(np.max(a)) for sid, a in floors_k.items()}
        self._still_busy(now, {n: c.min(axis=1) for n, c in cap_fit.items()},
                         {**wc, **{k: max(a, floors.get(k, 0.0)) for k, a in approved.items()}})

        # 3. commands
        for sid in sorted(desired_station):
            if not self.ledgers[sid].online:
                continue
            cap_a = P.quantise_a(approved.get(sid, 0.0), min_a=0.0)
            scale = 1.0
            if desired_station[sid] > 1e-9 and cap_a < desired_station[sid] - 1e-9:
                scale = cap_a / desired_station[sid]
            result.commands += self._station_lease(sid, cap_a, now)
            for s in by_station.get(sid, []) if sid in planned_stations else []:
                key = session_key(s.station_id, s.evse_id)
                g = P.quantise_a(want.get(key, 0.0) * scale, min_a=s.min_current_a)
                held = self.grant_a.get(key)
                if key in self.limiter_a and held is not None and scale >= 1.0 - 1e-9 \
                        and held - cfg.change_threshold_a < g < held:
                    g = held   # rounding noise under a limiter cut: not worth a command (the limiter watches)
                binding = None
                clamped = ""
                if result.plan is not None:
                    v = result.plan.verdicts.get(s.session_id)
                    binding = v.binding if v else None
                if key in self.limiter_a and self.limiter_a[key] < plan_now.get(key, 0.0) - 1e-9:
                    clamped = "limiter"
                if scale < 1.0 - 1e-9:
                    clamped = "budget"
                result.explanations[s.session_id] = Explanation(s.session_id, g, plan_now.get(key, 0.0),
                                                                binding, clamped)
                result.commands += self._tx_lease(s, g, now)
        for sid in sorted(by_station):
            if sid in planned_stations:
                continue
            for s in by_station[sid]:
                why = "failsafe:" + (self.ledgers[sid].last_failure or "offline")
                node = self.topology.station_by_id[sid].node
                result.explanations[s.session_id] = Explanation(
                    s.session_id, 0.0, 0.0, BindingConstraint(node, -1, 0, why), "failsafe")
        # fallbacks that never got installed (rejected, lost): retry once the hold is over
        for sid, led in self.ledgers.items():
            in_flight = any(p.purpose == command_pb2.PROFILE_PURPOSE_STATION_MAX and math.isinf(p.valid_until)
                            for p in led.pending.values())
            held = led.failed_at is not None and now - led.failed_at < cfg.failsafe_hold_s
            if led.online and not led.fallback_installed and not in_flight and not held:
                result.commands.append(self._fallback(sid, now))
            elif led.online and led.fallback_installed and not held and self._fallback_outdated(sid, now):
                result.commands.append(self._fallback(sid, now))
        self.last = result
        return result

    # ---------------------------------------------------------------- grid-aware fallbacks
    def _fixed_draw_w(self, slot_starts: list[float], plannable: set[str],
                      wc: dict[str, float]) -> dict[str, np.ndarray]:
        """[3, T] W per node reserved before planning: every station's floor (its worst case if not plannable).

        A floor that changes over the horizon (a scheduled fallback) counts with its highest value per slot.
        """
        T = len(slot_starts)
        step = self.cfg.slot_s
        constant: dict[str, float] = {}
        out = {n.id: np.zeros((3, T)) for n in self.topology.nodes}
        horizon_end = slot_starts[-1] + step
        for sid, led in self.ledgers.items():
            if sid not in plannable:
                constant[sid] = wc[sid]
                continue
            if not led.floor_steps(slot_starts[0], horizon_end):
                constant[sid] = led.floor_max_a(slot_starts[0], slot_starts[0] + step)
                continue
            per_slot = np.array([led.floor_max_a(ts, ts + step) for ts in slot_starts]) * self.voltage_v
            phases = station_phases(self.topology, sid)
            for nid in self.topology.station_path(sid):
                for ph in phases:
                    out[nid][ph] += per_slot
        for nid, d in node_draw_w(self.topology, constant).items():
            out[nid] += d[:, None]
        return out

    def _budget_moments(self, now: float, capacity: Capacity, slot_starts: list[float]) -> tuple[
            dict[str, np.ndarray], dict[str, float | np.ndarray], dict[str, float | np.ndarray]]:
        """The moments of a lease sent now at which the budget changes — now, each later slot start where
        the capacity changes and each step of a fallback until the lease ends — and at each: the capacity
        per node ([3, K] W), each station's worst case and its floor ([K] A, or one value where the floor
        does not change: a lease that ends meanwhile only lowers the worst case, so its value now bounds it).

        The fit must hold at every moment: a single highest worst case against a single lowest capacity
        would mix moments (a floor that rises when a DSO window ends would count during the window).
        """
        end = now + self.cfg.lease_s
        steps = {sid: led.change_times(now, end) for sid, led in self.ledgers.items()}
        times = {now}
        for ts in steps.values():
            times.update(ts)
        for k in range(1, len(slot_starts)):
            if slot_starts[k] < end and any(np.any(c[:, k] != c[:, k - 1]) for c in capacity.w.values()):
                times.add(slot_starts[k])
        moments = sorted(times)
        T = len(slot_starts)
        cols = [min(T - 1, bisect.bisect_right(slot_starts, t) - 1) for t in moments]
        cap = {n: c[:, cols] for n, c in capacity.w.items()}
        wc: dict[str, float | np.ndarray] = {}
        floors: dict[str, float | np.ndarray] = {}
        for sid, led in self.ledgers.items():
            if steps[sid]:
                wc[sid] = np.array([led.worst_case_a(t) for t in moments])
                floors[sid] = np.array([led.floor_worst_a(t) for t in moments])
            else:
                wc[sid] = led.worst_case_a(now)
                floors[sid] = led.floor_worst_a(now)
        return cap, wc, floors

    def _still_busy(self, now: float, cap_w: dict[str, np.ndarray], draw_a: dict[str, float]) -> None:
        """Nodes where giving the released idle floors back would not fit next to what the cars now get:
        they stay 'busy' (released) — releasing frees the capacity, so the binding constraint alone would
        restore and release them again every cycle."""
        back: dict[str, float] = {}
        for st in self.topology.stations:
            if st.id not in self._stations_charging:
                gap = st.fallback_current_a - self.ledgers[st.id].floor_a(now)
                if gap > 1e-9:
                    back[st.id] = gap
        if not back:
            return
        extra = node_draw_w(self.topology, back)
        used = node_draw_w(self.topology, draw_a)
        for n, add in extra.items():
            if np.any(add > 0) and np.any(used[n] + add > cap_w[n] + 1e-6):
                self._busy_at[n] = now

    @staticmethod
    def _wants_energy(s: SessionState, now_dt: datetime) -> bool:
        """False for a car that is done: its known need is met, or it stopped drawing (full) while granted."""
        if s.remaining_wh <= 0 and not s.need_guessed:
            return False
        return not (s.tapering(now_dt) and (s.measured_current_a or 0.0) < 1.0)

    def _busy_nodes(self) -> set[str]:
        """Nodes whose capacity held a car back in the last plan (its binding constraint, or the budget)."""
        busy: set[str] = set()
        if self.last is None:
            return busy
        station_of = {s.session_id: s.station_id for s in self.book.sessions.values()}
        for ex in self.last.explanations.values():
            b = ex.binding
            if b is not None and b.slot == 0 and b.node_id in self.topology.node_by_id:
                busy.add(b.node_id)
            if ex.clamped_by == "budget" and ex.session_id in station_of:
                busy.update(self.topology.station_path(station_of[ex.session_id]))
        return busy

    def _fallback_targets(self, now: float, by_station: dict[str, list[SessionState]],
                          busy: set[str] | None = None) -> dict[str, list[tuple[float, float]]]:
        """Per station, the fallback schedule [(from s, A)] under which Σ fallbacks fits every node's
        capacity over the horizon (limits, DSO windows, forecast base load), on a wall-clock slot grid.

        Where they do not all fit, stations keep their nominal fallback in a fixed order (charging first,
        then priority, then id, so the schedule is stable between plans) while there is room; the others get
        what is left, 0 below the 6 A minimum. Stations whose path never gets tight keep the nominal value.
        Idle stations (no car, or a car that is done) under a ``busy`` node (cars held back by its capacity) get 0 with
        ``release_idle_fallbacks``: their reserved floor goes to the cars (a car plugging in there waits for
        its grant instead of starting at the fallback).
        """
        cfg = self.cfg
        step = cfg.slot_s
        t0 = math.floor(now / step) * step
        starts = [t0 + k * step for k in range(cfg.horizon_slots + 1)]
        cap = node_capacity(self.topology, self.node_inputs, self.external.values(), now, starts, step)
        nominal = {s.id: s.fallback_current_a for s in self.topology.stations}
        if cfg.release_idle_fallbacks and busy:   # (None or empty: nothing to release)
            for sid in nominal:
                if sid not in self._stations_charging and busy.intersection(self.topology.station_path(sid)):
                    nominal[sid] = 0.0
        need = node_draw_w(self.topology, nominal)
        tight = {n: bool(np.any(cap.w[n] < need[n][:, None] - 1e-6)) for n in need}
        out: dict[str, list[tuple[float, float]]] = {sid: [(now, a)] for sid, a in nominal.items()}
        if not any(tight.values()):
            return out
        affected = [sid for sid in nominal if any(tight[n] for n in self.topology.station_path(sid))]
        order = sorted(affected, key=lambda sid: (
            0 if sid in by_station else 1, -max((x.priority for x in by_station.get(sid, [])), default=0), sid))
        room = {n: c.copy() for n, c in cap.w.items()}
        values: dict[str, np.ndarray] = {}
        v = self.voltage_v
        for sid in order:
            phases = station_phases(self.topology, sid)
            path = self.topology.station_path(sid)
            avail = np.min(np.stack([room[n][p] for n in path for p in phases]), axis=0) / v
            a = np.minimum(nominal[sid], np.maximum(avail, 0.0))
            a = np.where(a >= min(P.MIN_RATE_A, nominal[sid]) - 1e-9, np.floor(a * 10 + 1e-9) / 10, 0.0)
            for n in path:
                for p in phases:
                    room[n][p] -= a * v
            values[sid] = a
        for sid, a in values.items():
            steps = [(now, float(a[0]))]
            for k in range(1, len(starts)):
                if abs(a[k] - steps[-1][1]) > 1e-9:
                    steps.append((starts[k], float(a[k])))
            out[sid] = steps
        return out

    def _fallback_outdated(self, station_id: str, now: float) -> bool:
        """Whether the installed (or in-flight) fallback must be replaced by the target schedule.

        Lower anywhere → at once (the station could draw more than the grid allows if the allocator died).
        Higher only → when the one in force is at least ``FALLBACK_RELAX_S`` old (no churn on forecast noise).
        """
        led = self.ledgers[station_id]
        cur = [x for x in [led.accepted.get(FALLBACK_KEY), *led.pending.values(), *led.uncertain.values()]
               if x is not None and x.key == FALLBACK_KEY]
        # known installed but not what (a restart): it counts at its nominal value, as in the ledger
        newest = max(cur, key=lambda x: x.sent_at) if cur else Sent(
            "", FALLBACK_KEY, command_pb2.PROFILE_PURPOSE_STATION_MAX, 0, led.fallback_a, math.inf, -math.inf)
        target = self.fallback_target.get(station_id, [])
        if len(target) <= 1 and len(newest.schedule) <= 1:
            # the common case, one value each: no profile needs building
            a = target[0][1] if target else self.topology.station_by_id[station_id].fallback_current_a
            want: tuple[tuple[float, float], ...] = ((now, P.quantise_a(a)),)   # as _periods sends it
        else:
            want = P.profile_schedule_a(self._fallback_payload(station_id, now), self.target(station_id))
        if len(want) == 1 and len(newest.schedule) <= 1:
            have = newest.limit_at(now)
            higher, lower = want[0][1] > have + 0.05, want[0][1] < have - 0.05
        else:
            probe = Sent("", FALLBACK_KEY, 0, 0, 0.0, math.inf, now, want)
            times = sorted({now, *(t + 1.0 for t, _a in want if t > now), *(t + 1.0 for t, _a in newest.schedule
                                                                              if t > now)})
            diffs = [probe.limit_at(t) - newest.limit_at(t) for t in times]
            higher, lower = max(diffs) > 0.05, min(diffs) < -0.05
        if lower:
            return True
        # a car arrived at a station whose fallback was lowered: raise it now, it is what the car may count on
        arrived = station_id in self._stations_charging and newest.limit_at(now) < want[0][1] - 0.05
        return higher and (arrived or now - newest.sent_at >= FALLBACK_RELAX_S)

    def _solve(self, sessions: list[SessionState], capacity: Capacity, fixed_w: dict[str, np.ndarray],
               now_dt: datetime, T: int) -> tuple[Plan, dict[str, float]]:
        """Plan the sessions above their base (share of the station floor); returns the plan and the bases (A).

        A session's grant is base + the planner's current; its min/max currents are shifted down by the
        base. The energy asked of the planner stays what the car needs: it is re-planned every cycle from
        the metered energy, so what the base delivers on top only makes the car finish sooner.
        """
        cfg = self.cfg
        topo = self.topology
        per_station: dict[str, int] = {}
        for s in sessions:
            per_station[s.station_id] = per_station.get(s.station_id, 0) + 1
        base: dict[str, float] = {}
        nodes = []
        for n in topo.nodes:
            c = np.maximum(capacity.w[n.id] - fixed_w[n.id], 0.0)
            nodes.append(NodeCapacity(n.id, c, n.parent, capacity.source[n.id]))
        evses: dict[str, Evse] = {}
        plan_sessions = []
        now = now_dt.timestamp()
        for s in sessions:
            st = topo.station_by_id[s.station_id]
            key = session_key(s.station_id, s.evse_id)
            ev = st.evse(s.evse_id)
            evse_max = min(ev.max_current_a or st.max_current_a, st.max_current_a,
                           self.station_limit_a(s.station_id, s.evse_id, now))
            max_a = min(s.max_current_a, evse_max)
            if s.tapering(now_dt) and s.measured_current_a is not None:
                max_a = min(max_a, s.measured_current_a + TAPER_MARGIN_A)
            if key in self.limiter_a:      # cut by the limiter: planned within the cut until it is released
                max_a = min(max_a, self.limiter_a[key])
            # the share of the floor the car can count on for the whole lease (a fallback may drop meanwhile)
            floor = self.ledgers[s.station_id].floor_min_a(now, now + cfg.lease_s)
            b = max(0.0, min(floor / per_station[s.station_id], max_a))
            base[key] = b
            evses[key] = Evse(key, tuple(topo.station_path(s.station_id)),
                              tuple(PHASES.index(p) for p in st.evse_phases(s.evse_id)),
                              max_current_a=max(0.0, evse_max - b), min_current_a=max(0.0, ev.min_current_a - b))
            dep_s = s.departure.timestamp() - now
            dep_slot = max(1, math.ceil(dep_s / cfg.slot_s))
            plan_sessions.append(Session(s.session_id, key, s.energy_needed_wh, 0, dep_slot,
                                         max(0.0, s.min_current_a - b), max(0.0, max_a - b), s.phases,
                                         self.voltage_v, float(s.priority), s.delivered_wh))
        problem = PlanningProblem(
            slots=SlotGrid(now_dt, T, cfg.slot_s), nodes=nodes, evses=list(evses.values()), sessions=plan_sessions,
            config=PlannerConfig(time_limit_s=10.0),
        )
        return self.planner.plan(problem), base

    def _due(self, station_id: str, key: str, now: float) -> bool:
        """A lease in this slot must be (re)sent: none, renewing, expired or unknown."""
        st = self.ledgers[station_id].lease_state(key, now, self.cfg.lease_s, self.cfg.renew_fraction)
        if st is LeaseState.ACTIVE:
            return False
        # a renewal already in flight is enough
        return not any(p.key == key and p.sent_at > now - self.cfg.command_timeout_s
                       for p in self.ledgers[station_id].pending.values())

    def _in_flight(self, station_id: str, key: str) -> Sent | None:
        """The newest unanswered command for profile slot ``key``."""
        pend = [p for p in self.ledgers[station_id].pending.values() if p.key == key]
        return max(pend, key=lambda p: p.sent_at) if pend else None

    def _station_lease(self, sid: str, cap_a: float, now: float) -> list[ProfileCommand]:
        """Send the station-cap lease when it differs from what is installed, or is due for renewal."""
        key = P.command_key(0, command_pb2.PROFILE_PURPOSE_STATION_MAX, P.LEASE_STACK)
        led = self.ledgers[sid]
        fly = self._in_flight(sid, key)
        if fly is not None and abs(fly.cap_a - cap_a) < 0.05:
            return []   # the same change is on its way
        acc = led.accepted.get(key)
        floor = led.floor_min_a(now, now + self.cfg.lease_s)
        if acc is None or acc.valid_until <= now:
            unknown = any(u.key == key for u in led.uncertain.values())
            if cap_a <= floor + 1e-9 and fly is None and not unknown:
                return []   # nothing above the fallback to grant or take back
        elif abs(acc.cap_a - cap_a) < 0.05 and not self._due(sid, key, now):
            return []
        elif cap_a <= floor + 1e-9 and acc.cap_a <= floor + 0.05 and fly is None:
            return []   # already down at the fallback: let it lapse instead of renewing it
        self.station_cap_a[sid] = cap_a
        payload = P.station_lease_profile(cap_a, _ts(now), self.cfg.lease_s, self.target(sid))
        return [self._issue(sid, "station_lease", payload, now + self.cfg.lease_s, now)]

    def _tx_lease(self, s: SessionState, grant_a: float, now: float) -> list[ProfileCommand]:
        """Send the TxProfile lease: always when lower, when higher by the threshold, or for renewal."""
        key = session_key(s.station_id, s.evse_id)
        ckey = P.command_key(s.evse_id, command_pb2.PROFILE_PURPOSE_TX, P.LEASE_STACK)
        fly = self._in_flight(s.station_id, ckey)
        if fly is not None and abs(fly.cap_a - grant_a) < 0.05 and key in self.grant_a:
            return []
        acc = self.ledgers[s.station_id].accepted.get(ckey)
        if key in self.grant_a and acc is not None and acc.valid_until > now and fly is None:
            lower_ = grant_a < acc.cap_a - 0.05
            raise_ = grant_a > acc.cap_a + self.cfg.change_threshold_a
            if not lower_ and not raise_ and not self._due(s.station_id, ckey, now):
                return []
        self.grant_a[key] = grant_a
        payload = P.tx_profile(s.evse_id, s.transaction_id, [(_ts(now), grant_a)], _ts(now), self.cfg.lease_s,
                               self.target(s.station_id))
        return [self._issue(s.station_id, "tx_lease", payload, now + self.cfg.lease_s, now)]

    # ---------------------------------------------------------------- fast limiter
    def limit(self, node_id: str, now_dt: datetime) -> list[ProfileCommand]:
        """React to the latest measured load of ``node_id``: lower at once or give back, never above plan."""
        inp = self.node_inputs.get(node_id)
        if inp is None or inp.load_w is None or node_id not in self.topology.node_by_id:
            return []
        now = now_dt.timestamp()
        lim = self.capacity_limit_w(node_id, now)
        margin_w = max(lim) * self.cfg.limiter_margin_pct / 100.0
        # cut back to the margin the planner works to, so the re-plan that follows has nothing left to cut
        target_w = max(lim) * max(self.cfg.limiter_margin_pct, self.topology.node_by_id[node_id].safety_margin_pct) \
            / 100.0
        conns = []
        for s in self.book.sessions.values():
            if node_id not in self.topology.station_path(s.station_id):
                continue
            key = session_key(s.station_id, s.evse_id)
            if key not in self.grant_a or not self.ledgers[s.station_id].online:
                continue
            st = self.topology.station_by_id[s.station_id]
            conns.append(Connector(key, tuple(PHASES.index(p) for p in st.evse_phases(s.evse_id)),
                                   self.grant_a[key], self.plan_a.get(key, self.grant_a[key]), s.priority,
                                   s.min_current_a, s.measured_current_a if s.meter_fresh(now_dt) else None))
        cuts = lower(inp.load_w, lim, margin_w, self.voltage_v, conns, target_w)
        ups = {} if cuts else regrant(inp.load_w, lim, target_w, self.voltage_v, conns)
        cmds: list[ProfileCommand] = []
        if ups:   # only a give-back needs the budget (the worst case of every station: not per reading)
            starts = [now + k * self.cfg.slot_s for k in range(max(1, math.ceil(self.cfg.lease_s / self.cfg.slot_s)))]
            cap_k, wc, floors = self._budget_moments(
                now, node_capacity(self.topology, self.node_inputs, self.external.values(), now, starts,
                                   self.cfg.slot_s), starts)
        for key, a in {**cuts, **ups}.items():
            found = self.book.sessions.get(key)
            if found is None:
                continue
            s = found
            if key in ups:
                # a give-back is a raise: it must still fit the worst-case budget
                want = dict(self.grant_a)
                want[key] = a
                desired = self._station_cap_for(s.station_id, want)
                ok = fit_caps(self.topology, cap_k, wc, {s.station_id: desired}, [s.station_id],
                              floor_a={s.station_id: floors[s.station_id]})
                if ok.get(s.station_id, 0.0) < desired - 1e-9:
                    continue
                wc[s.station_id] = np.maximum(wc[s.station_id], desired)
                if a >= self.plan_a.get(key, 0.0) - 1e-9:
                    self.limiter_a.pop(key, None)
                else:
                    self.limiter_a[key] = a
            else:
                self.limiter_a[key] = a
                self.limiter_at[key] = now
            self.grant_a[key] = a
            cmds += self._force_tx(s, a, now)
            cap = self._station_cap_for(s.station_id, self.grant_a)
            if key in ups or cap < self.station_cap_a.get(s.station_id, math.inf) - 1e-9:
                self.station_cap_a[s.station_id] = cap
                payload = P.station_lease_profile(cap, _ts(now), self.cfg.lease_s, self.target(s.station_id))
                cmds.append(self._issue(s.station_id, "station_lease", payload, now + self.cfg.lease_s, now))
        return cmds

    def _force_tx(self, s: SessionState, grant_a: float, now: float) -> list[ProfileCommand]:
        payload = P.tx_profile(s.evse_id, s.transaction_id, [(_ts(now), grant_a)], _ts(now), self.cfg.lease_s,
                               self.target(s.station_id))
        return [self._issue(s.station_id, "tx_lease", payload, now + self.cfg.lease_s, now)]

    def station_limit_a(self, station_id: str, evse_id: int, now: float) -> float:
        """Lowest station-scoped external limit in force for an EVSE now (a station's own NotifyChargingLimit),
        per phase A; inf when none. The planner plans no more for the EVSE (on a whole-station limit, each
        EVSE is capped by it: the station enforces the sum itself)."""
        lim = math.inf
        for e in self.external.values():
            if e.station_id == station_id and e.evse_id in (0, evse_id):
                val = e.value_at(now, now)
                if val is not None:
                    lim = min(lim, min(val) / self.voltage_v)
        return max(0.0, lim)

    def capacity_limit_w(self, node_id: str, now: float) -> tuple[float, float, float]:
        """Per-phase limit (W) a node's measured total load must stay under: topology and external limits."""
        lim = list(self.topology.limit_w(node_id))
        for e in self.external.values():
            if e.node_id == node_id and not e.station_id:
                val = e.value_at(now, now)
                if val is not None:
                    lim = [min(lim[p], val[p]) for p in range(3)]
        return (lim[0], lim[1], lim[2])

    # ---------------------------------------------------------------- views
    def outlook(self, res: PlanResult, s: SessionState) -> Outlook | None:
        """A session's plan including its base: per-slot current (A) and power (W), energy by departure."""
        plan = res.plan
        if plan is None or s.session_id not in plan.session_ids:
            return None
        key = session_key(s.station_id, s.evse_id)
        b = res.base_a.get(key, 0.0)
        r = plan.row(s.session_id)
        dep = (s.departure - res.at).total_seconds()
        cur = []
        for t in range(plan.slots.count):
            start_s = t * plan.slots.duration_s
            cur.append(float(plan.current_a[r, t]) + (b if start_s < dep else 0.0))
        per_a = self.voltage_v * s.phases
        planned = 0.0
        for t, a in enumerate(cur):
            span = min(plan.slots.duration_s, max(0.0, dep - t * plan.slots.duration_s))
            planned += a * per_a * span / 3600.0
        planned = min(planned, s.remaining_wh)
        short = max(0.0, s.remaining_wh - planned)
        return Outlook(cur, [a * per_a for a in cur], planned, short, short <= max(1.0, 1e-3 * s.remaining_wh))

    # ----------------------------------------------------------------
    def lease_counts(self, now: float) -> dict[str, int]:
        """Lease slots by state: active, renewing, expired (lapsed, not renewed), failsafe (fate unknown)."""
        out = {"active": 0, "renewing": 0, "expired": 0, "failsafe": 0}
        for led in self.ledgers.values():
            keys = {s.key for s in [*led.accepted.values(), *led.uncertain.values()]
                    if math.isfinite(s.valid_until)}
            for k in keys:
                st = led.lease_state(k, now, self.cfg.lease_s, self.cfg.renew_fraction)
                if st.value in out:
                    out[st.value] += 1
            out["expired"] += len(led.expired - keys)
        return out
