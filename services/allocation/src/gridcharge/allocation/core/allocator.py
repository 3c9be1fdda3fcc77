"""The allocation state machine: events in, SetChargingProfile commands out (pure, no I/O).

``Allocator`` holds the pieces its docs name and wires them: the session book (`sessions.py`), the
station ledgers (`failsafe.py`), the command issuer with the write budget (`issuer.py`, `leases.py`), the
grid-aware fallbacks (`fallbacks.py`) and the node budget (`budget.py`). ``plan`` runs one planning cycle
(`cycle.py`: planner → calm control law → budget fit → commands), ``limit`` the fast limiter for one node,
``station_online`` the fallback profile for a station. Time comes in as arguments, never from a clock, so
the same code runs live, in simulation and under Hypothesis.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from gridcharge.allocation.core import cycle
from gridcharge.allocation.core import profiles as P
from gridcharge.allocation.core.budget import ExternalLimitWindow, NodeInputs, node_capacity
from gridcharge.allocation.core.cycle import Explanation, Outlook, PlanResult
from gridcharge.allocation.core.failsafe import LEASE_KEY, RESTORED_PREFIX, LeaseState, Sent, StationLedger
from gridcharge.allocation.core.fallbacks import RELAX_S, FallbackSchedules
from gridcharge.allocation.core.issuer import CommandIssuer, ProfileCommand, StationCaps
from gridcharge.allocation.core.leases import LeasePolicy, WriteLog, WritePolicy
from gridcharge.allocation.core.limiter import Connector, lower
from gridcharge.allocation.core.model import Planner
from gridcharge.allocation.core.planner import LpPlanner
from gridcharge.allocation.core.prices import ExternalPrice
from gridcharge.allocation.core.sessions import SessionBook, SessionState, session_key
from gridcharge.command.v1 import command_pb2
from gridcharge.shared.topology import PHASES, Topology

log = logging.getLogger(__name__)

WOBBLE_S = 600.0  # the base-load history the raise hysteresis looks at (s)

__all__ = ["Allocator", "AllocatorConfig", "Explanation", "Outlook", "PlanResult", "ProfileCommand", "StationCaps"]


@dataclass(frozen=True)
class AllocatorConfig:
    """Timing and tuning of the allocator (seconds, A)."""

    slot_s: float = 900.0
    horizon_slots: int = 96  # 24 h of 15-min slots
    plan_interval_s: float = 60.0
    debounce_s: float = 1.0
    leases: LeasePolicy = field(default_factory=LeasePolicy)
    writes: WritePolicy = field(default_factory=WritePolicy)
    command_timeout_s: float = 60.0  # no result by then: fate unknown
    failsafe_hold_s: float = 120.0  # a failing station is not planned for this long
    limiter_margin_pct: float = 2.0  # of the node limit, on top of the measured load
    command_ttl_s: float = 30.0  # a command not sent by then is dropped by the gateway
    release_idle_fallbacks: bool = True  # idle stations under a busy node give their floor to the cars
    limiter_hold_s: float = 60.0  # a limiter cut holds (the plan stays within it) until a cycle this later
    raise_headroom_pct: float = 5.0  # at most this much of a node's limit is left free by raises: the band
    #                                      is how much its base load wobbled in the last 10 min (hysteresis)
    priority_charging_level: int = 10  # session priority while OCPP 2.1 priority charging is active (default 1)
    # a single-phase car at a multi-phase station that accepts W gets its lease in W on one phase: the budget
    # counts it as [1, 1/2, 1/3] / low_voltage of the grant on L1, L2, L3 instead of the grant on every phase
    one_phase_w_leases: bool = True
    low_voltage: float = 0.9  # lowest voltage a W limit may meet, × nominal (EN 50160: −10 %)


class Allocator:
    """State and decisions of the allocation service for one topology."""

    def __init__(
        self,
        topology: Topology,
        config: AllocatorConfig | None = None,
        planner: Planner | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.topology = topology
        self.cfg = config or AllocatorConfig()
        self.planner: Planner = planner or LpPlanner()
        self.voltage_v = topology.nominal_voltage_v
        self.book = SessionBook(dict(topology.station_by_id), topology.session_defaults, self.voltage_v)
        skew = self.cfg.leases.clock_skew_s
        self.ledgers = {
            s.id: StationLedger(s.id, s.fallback_current_a, s.max_current_a, skew_s=skew, phases=len(s.phase_map))
            for s in topology.stations
        }
        self.issuer = CommandIssuer(
            topology,
            self.ledgers,
            self.cfg.leases,
            WriteLog(self.cfg.writes),
            self.cfg.command_ttl_s,
            new_id or (lambda: uuid.uuid4().hex),
            low_voltage=self.cfg.low_voltage,
        )
        self.fallbacks = FallbackSchedules(topology, self.cfg.release_idle_fallbacks)
        self.node_inputs: dict[str, NodeInputs] = {}
        self.external: dict[tuple[str, str], ExternalLimitWindow] = {}
        self.prices: dict[tuple[str, str], ExternalPrice] = {}  # external prices the planner uses (prices.py)
        self.limiter_a: dict[str, float] = {}  # session key -> limiter ceiling (A)
        self.limiter_at: dict[str, float] = {}  # session key -> when the limiter last cut it (s)
        self.cut_at: dict[str, float] = {}  # node -> when the limiter last cut under it (s)
        self.grant_a: dict[str, float] = {}  # session key -> what the car may draw now (A)
        self.sure_a: dict[str, float] = {}  # session key -> what the car can surely draw now (A, set_grant)
        self.grant_since: dict[str, float] = {}  # session key -> since when (s) sure_a holds
        self.plan_a: dict[str, float] = {}  # session key -> plan grant now (A)
        self.charging: set[str] = set()  # stations with a car that wants energy
        self.busy_at: dict[str, float] = {}  # node -> last plan in which its capacity held a car back
        self.base_history: dict[str, deque[tuple[float, float]]] = {}  # node -> (s, highest phase base load W)
        self.last: PlanResult | None = None

    # ---------------------------------------------------------------- views used by the service and API
    @property
    def caps(self) -> dict[str, StationCaps]:
        return self.issuer.caps

    @property
    def station_cap_a(self) -> dict[str, float]:
        """Per station: the station cap it holds now (a lease, or its fallback), A per phase."""
        now = self.last.at.timestamp() if self.last is not None else -math.inf
        return {sid: led.held_a(now) for sid, led in self.ledgers.items() if led.online}

    def target(self, station_id: str) -> P.StationProfileTarget:
        return self.issuer.target(station_id)

    def worst_case_a(self, now: float) -> dict[str, float]:
        """Per station: the highest per-phase current it may draw at ``now`` (A)."""
        return {sid: led.worst_case_a(now) for sid, led in self.ledgers.items()}

    def worst_case_ph(self, now: float) -> dict[str, list[float]]:
        """Per station: the highest current it may draw at ``now`` on each of its phases (A)."""
        return {sid: led.worst_case_ph(now) for sid, led in self.ledgers.items()}

    def capacity_at(self, now: float, t: float) -> dict[str, np.ndarray]:
        """[3] W of EV capacity per node at time ``t`` as known at ``now``."""
        cap = node_capacity(self.topology, self.node_inputs, self.external.values(), now, [t])
        return {n: c[:, 0] for n, c in cap.w.items()}

    def capacity_now(self, now: float) -> dict[str, np.ndarray]:
        """[3] W of EV capacity per node for the current moment."""
        return self.capacity_at(now, now)

    def station_limit_a(self, station_id: str, evse_id: int, now: float) -> float:
        """Lowest station-scoped external limit in force for an EVSE now (a station's own NotifyChargingLimit),
        per phase A; inf when none. The planner plans no more for the EVSE (on a whole-station limit, each
        EVSE is capped by it: the station enforces the sum itself)."""
        return self.station_limit(station_id, evse_id, now)[0]

    def station_limit(self, station_id: str, evse_id: int, now: float) -> tuple[float, str]:
        """(limit A per phase, its source, e.g. "ocpp-ems") of `station_limit_a`; (inf, "") when none. A
        per-phase limit counts at its lowest phase (the station caps every phase of an EVSE alike)."""
        lim, src = math.inf, ""
        for e in self.external.values():
            if e.station_id == station_id and e.evse_id in (0, evse_id):
                val = e.value_at(now, now)
                if val is not None and min(val) / self.voltage_v < lim:
                    lim, src = min(val) / self.voltage_v, e.source
        return max(0.0, lim), src

    def capacity_limit_w(self, node_id: str, now: float) -> tuple[float, float, float]:
        """Per-phase limit (W) a node's measured total load must stay under: topology and external limits."""
        lim = list(self.topology.limit_w(node_id))
        for e in self.external.values():
            if e.node_id == node_id and not e.station_id:
                val = e.value_at(now, now)
                if val is not None:
                    lim = [min(lim[p], val[p]) for p in range(3)]
        return (lim[0], lim[1], lim[2])

    def lease_record(self, station_id: str, now: float) -> tuple[float, float, list[float]] | None:
        return self.issuer.lease_record(station_id, now)

    def lease_counts(self, now: float) -> dict[str, int]:
        """Station-cap leases by state: active, renewing, expired (lapsed unrenewed), failsafe (fate unknown)."""
        out = {"active": 0, "renewing": 0, "expired": 0, "failsafe": 0}
        lead = self.cfg.leases.renew_lead_s
        for led in self.ledgers.values():
            st = led.lease_state(LEASE_KEY, now, lead)
            if st is not LeaseState.NONE:
                out[st.value] += 1
            elif LEASE_KEY in led.expired:
                out["expired"] += 1
        return out

    def writes_per_hour(self, now: float) -> list[int]:
        """SetChargingProfile writes of each station in the last hour."""
        return self.issuer.writes.per_hour(now, list(self.ledgers))

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
            return []  # Connected and Boot come together: one fallback is enough
        return [self.fallback_command(station_id, now, "boot")]

    def fallback_command(self, station_id: str, now: float, reason: str) -> ProfileCommand:
        payload = self.fallbacks.payload(station_id, now, self.target(station_id))
        return self.issuer.fallback(station_id, payload, now, reason)

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

    def priority_charging(self, station_id: str, transaction_id: str, activated: bool) -> bool:
        """OCPP 2.1 NotifyPriorityCharging; True when a session's priority changed (re-plan)."""
        s = self.book.find(station_id, 0, transaction_id)
        before = s.priority if s is not None else None
        s = self.book.priority_charging(station_id, transaction_id, activated, self.cfg.priority_charging_level)
        return s is not None and s.priority != before

    def profile_mismatch(self, station_id: str, now: float, what: str) -> list[ProfileCommand]:
        """The gateway's profile check found the station not applying what it accepted: nothing we think is
        installed can be relied on. The station is budgeted at its worst case — its hardware maximum, as if
        it had no profile — and not planned until its fallback is accepted again and the fail-safe hold has
        passed; the fallback goes out again now, leases and TxProfiles with the next plan."""
        led = self.ledgers.get(station_id)
        if led is None or not led.online:
            return []
        for sent in led.accepted.values():
            if sent.purpose == command_pb2.PROFILE_PURPOSE_STATION_MAX and math.isfinite(sent.valid_until):
                led.uncertain[sent.command_id] = sent  # a lease may or may not be in force until its end
        led.accepted.clear()
        led.fallback_installed = False
        led.failed_at, led.last_failure = now, f"profile check: {what}"[:64]
        for key in [k for k in self.issuer.tx_sent_a if k.startswith(station_id + "/")]:
            del self.issuer.tx_sent_a[key]
        return [self.fallback_command(station_id, now, "profile_check")]

    def observe_command(
        self, station_id: str, command_id: str, payload: command_pb2.SetChargingProfile, sent_at: float
    ) -> bool:
        """A profile command seen on the bus (e.g. sent by the previous leader): count it as in flight."""
        return self.issuer.observe(station_id, command_id, payload, sent_at)

    def node_load(
        self, node_id: str, load_w: tuple[float, float, float], base_load_w: tuple[float, float, float], at: float
    ) -> bool:
        if node_id not in self.topology.node_by_id or not all(map(math.isfinite, load_w + base_load_w)):
            return False
        inp = self.node_inputs.setdefault(node_id, NodeInputs())
        if inp.load_at is not None and at < inp.load_at:
            return False
        inp.load_w, inp.base_load_w, inp.load_at = load_w, base_load_w, at
        hist = self.base_history.setdefault(node_id, deque())
        hist.append((at, max(base_load_w)))
        while hist and hist[0][0] < at - WOBBLE_S:
            hist.popleft()
        return True

    def raise_band_w(self, node_id: str) -> float:
        """W per phase raises leave free under a node: how much its base load moved in the last ``WOBBLE_S``
        (a base load that wobbles by that much would otherwise lower and raise the same cars every cycle),
        at most ``raise_headroom_pct`` of its limit."""
        hist = self.base_history.get(node_id)
        if not hist:
            return 0.0
        vals = [b for _t, b in hist]
        return min(max(vals) - min(vals), max(self.topology.limit_w(node_id)) * self.cfg.raise_headroom_pct / 100.0)

    def headroom(
        self,
        node_id: str,
        start: float,
        step_s: float,
        slots: list[tuple[float, float, float]],
        sources: list[str],
        at: float,
    ) -> bool:
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
        if lim.valid_to <= lim.valid_from:  # an empty window withdraws the limit
            return self.external.pop((lim.node_id, lim.limit_id), None) is not None
        self.external[(lim.node_id, lim.limit_id)] = lim
        return True

    def remove_external_limit(self, node_id: str, limit_id: str) -> bool:
        return self.external.pop((node_id, limit_id), None) is not None

    def external_price(self, price: ExternalPrice) -> bool:
        """Keep an external price for the plan (the caller checked ``prices.refusal``); one without intervals
        withdraws the price with that id. Prices whose intervals have all ended are dropped. True = changed."""
        self.prices = {k: p for k, p in self.prices.items() if p.ends_after(price.received_at)}
        if not price.intervals:
            return self.prices.pop(price.key, None) is not None
        changed = self.prices.get(price.key) != price
        self.prices[price.key] = price
        return changed

    def set_grant(self, key: str, grant_a: float, now: float) -> None:
        """What the car of session ``key`` may draw from now on (A). Its meter is judged (sessions.py) against
        ``sure_a``: the grant, or less while a lower station cap may still be in force (a lease in flight or
        of unknown fate): a car held down by such a lease would look full and never be offered more."""
        s = self.book.sessions.get(key)
        led = self.ledgers.get(s.station_id) if s is not None else None
        sure = min(grant_a, led.least_a(now)) if led is not None else grant_a
        if abs(self.sure_a.get(key, -1.0) - sure) > 0.05:
            self.grant_since[key] = now
        self.grant_a[key] = grant_a
        self.sure_a[key] = sure

    def session_ended(self, s: SessionState) -> None:
        key = session_key(s.station_id, s.evse_id)
        for d in (
            self.limiter_a,
            self.grant_a,
            self.sure_a,
            self.grant_since,
            self.plan_a,
            self.limiter_at,
            self.issuer.tx_sent_a,
        ):
            d.pop(key, None)

    def restore_lease(
        self, station_id: str, cap_a: float, valid_until: float, now: float, phase_a: Sequence[float] = ()
    ) -> bool:
        """After a restart: a station-cap lease a previous run may have installed counts until it ends.

        ``phase_a``: the most it allows on each station phase (A) as recorded (a lease in W counts differently per
        phase); without it, ``cap_a`` on every phase (a record of an older version)."""
        led = self.ledgers.get(station_id)
        if led is None or not math.isfinite(cap_a) or valid_until <= now:
            return False
        cap_a = min(max(cap_a, 0.0), led.hw_max_a)
        weights: tuple[float, ...] = ()
        if cap_a > 0 and phase_a and all(math.isfinite(x) for x in phase_a):
            per = [min(max(float(x), 0.0), led.hw_max_a) for x in list(phase_a)[: led.phases]]
            per += [cap_a] * (led.phases - len(per))
            weights = tuple(x / cap_a for x in per)
        cid = f"{RESTORED_PREFIX}{station_id}"
        led.uncertain[cid] = Sent(
            cid,
            LEASE_KEY,
            command_pb2.PROFILE_PURPOSE_STATION_MAX,
            0,
            cap_a,
            min(valid_until, now + self.cfg.leases.max_lease_s),
            now,
            (),
            weights,
        )
        return True

    # ---------------------------------------------------------------- planning
    def plan(self, now_dt: datetime) -> PlanResult:
        """One planning cycle: expire, plan, apply the control law, fit the budget, emit what changes anything."""
        return cycle.run(self, now_dt)

    # ---------------------------------------------------------------- fast limiter
    def limit(self, node_id: str, now_dt: datetime) -> list[ProfileCommand]:
        """React to the latest measured load of ``node_id``: lower at once (giving back is the planner's
        job, after the raise hold)."""
        inp = self.node_inputs.get(node_id)
        if inp is None or inp.load_w is None or node_id not in self.topology.node_by_id:
            return []
        now = now_dt.timestamp()
        lim = self.capacity_limit_w(node_id, now)
        margin_w = max(lim) * self.cfg.limiter_margin_pct / 100.0
        # cut back to the margin the planner works to, so the re-plan that follows has nothing left to cut
        target_w = (
            max(lim) * max(self.cfg.limiter_margin_pct, self.topology.node_by_id[node_id].safety_margin_pct) / 100.0
        )
        conns = []
        for s in self.book.sessions.values():
            if node_id not in self.topology.station_path(s.station_id):
                continue
            key = session_key(s.station_id, s.evse_id)
            if key not in self.grant_a or not self.ledgers[s.station_id].online:
                continue
            st = self.topology.station_by_id[s.station_id]
            conns.append(
                Connector(
                    key,
                    tuple(PHASES.index(p) for p in st.evse_phases(s.evse_id)),
                    self.grant_a[key],
                    s.priority,
                    s.min_current_a,
                    s.measured_current_a if s.meter_fresh(now_dt) else None,
                )
            )
        cuts = lower(inp.load_w, lim, margin_w, self.voltage_v, conns, target_w)
        if not cuts:
            return []
        self.cut_at[node_id] = now
        self.busy_at[node_id] = now  # its capacity holds cars back: idle stations under it are released
        for key, a in cuts.items():
            if key in self.book.sessions:
                self.limiter_a[key] = a
                self.limiter_at[key] = now
                self.set_grant(key, a, now)
        cut_stations = {self.book.sessions[k].station_id for k in cuts if k in self.book.sessions}
        caps = {sid: cycle.station_cap_for(self.topology, sid, self.grant_a) for sid in cut_stations}
        # what the budget fit of the next cycle would lower too (the worst case of idle stations and of cars
        # drawing less than their grant): in the same cut, not as a second round a second later
        for sid, cap in cycle.safety_caps(self, now, node_id, caps).items():
            caps[sid] = cap
            self._cap_grants(sid, cap, now)
        cmds: list[ProfileCommand] = []
        for sid in sorted(caps):
            # a cut never raises a phase: a lease in W on one phase counts more on L1 than one in A does
            ph = self.ledgers[sid].worst_case_ph(now)
            w = self.issuer.lease_weights(sid)
            caps[sid] = min(caps[sid], min(ph[p] / w[p] for p in range(len(ph))))
            if caps[sid] < self.ledgers[sid].held_a(now) - 0.05:
                cmds.append(self.issuer.station_lease(sid, P.quantise_a(caps[sid]), now, "limiter"))
            if len(self.topology.station_by_id[sid].evses) > 1:
                for s in self.book.sessions.values():
                    key = session_key(sid, s.evse_id)
                    if s.station_id == sid and key in self.limiter_at and self.limiter_at[key] == now:
                        cmds.append(self.issuer.tx_profile(s, self.limiter_a[key], now, "limiter"))
        cmds += cycle.limiter_fallbacks(self, now, node_id)
        return cmds

    def _cap_grants(self, station_id: str, cap_a: float, now: float) -> None:
        """Scale the grants of a station's sessions so the station cap is at most ``cap_a`` (A per phase) and
        hold them there like a limiter cut (the plan stays within it until the hold ends)."""
        keys = [session_key(station_id, e.id) for e in self.topology.station_by_id[station_id].evses]
        keys = [k for k in keys if k in self.book.sessions and k in self.grant_a]
        have = cycle.station_cap_for(self.topology, station_id, self.grant_a)
        if not keys or have <= cap_a + 1e-9:
            return
        f = cap_a / have if have > 0 else 0.0
        for k in keys:
            a = P.quantise_a(self.grant_a[k] * f, min_a=0.0)
            self.limiter_a[k] = min(a, self.limiter_a.get(k, math.inf))
            self.limiter_at[k] = now
            self.set_grant(k, a, now)

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

    def busy(self, now: float) -> set[str]:
        """Nodes whose capacity held a car back within the last ``RELAX_S`` (no release/restore churn)."""
        return {n for n, t in self.busy_at.items() if now - t < RELAX_S}
