"""What each station may draw at worst, from the fate of the commands sent to it (pure, no I/O).

Safety principle 3, "unknown means worst case", per station:

- the floor is the installed fallback (station max, stack 0) once a station accepted it, else the
  hardware maximum (a station without a known profile charges unconstrained). A fallback may be a
  schedule (lowered ahead of a DSO window or a base-load peak), so the floor is a function of time;
- a station-cap lease (station max, stack 1) *overrides* the floor while it is valid (OCPP: within one
  purpose the highest stack level in force wins), above or below it. Every lease that may be in force
  counts until its ``valid_to``: the accepted one, those sent and not answered yet, and those whose fate
  is unknown (timed out, CALLERROR). The worst case at a moment is the highest value any of these
  possible states gives then; once a lease ended, that state is back at the floor;
- station clocks are trusted only to ``skew_s``: a lease may still be in force until ``valid_to`` +
  skew (so it counts upwards that long) and may already have lapsed at ``valid_to`` − skew (so a lease
  below the floor frees capacity only until then);
- a rejected/failed/offline station is not planned for a while (``failsafe_hold_s``): it is budgeted at
  that worst case and the others are re-planned around it.

Times are POSIX seconds. Currents are per phase (A). A lease in A bounds every phase the station is wired
to alike; a lease in W bounds the station's total power, so what it allows differs per phase (``Sent.weights``,
``profiles.phase_weights``): a single-phase car draws it all on L1, a two-phase one half on L1 and L2. The
worst case is therefore kept per station phase (``worst_case_ph``); ``worst_case_a`` is its highest phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from gridcharge.allocation.core.profiles import FALLBACK_STACK, LEASE_STACK, STATION_MAX, command_key
from gridcharge.command.v1 import command_pb2

C = command_pb2  # outcome enum values live on the module

FALLBACK_KEY = command_key(0, STATION_MAX, FALLBACK_STACK)
LEASE_KEY = command_key(0, STATION_MAX, LEASE_STACK)
RESTORED_PREFIX = "restored:"  # command id of a lease a previous run may have installed (Allocator.restore_lease)

# outcomes where the station certainly did not apply the profile
NOT_APPLIED = {
    C.COMMAND_OUTCOME_REJECTED,
    C.COMMAND_OUTCOME_OFFLINE,
    C.COMMAND_OUTCOME_INVALID,
    C.COMMAND_OUTCOME_SUPERSEDED,
    C.COMMAND_OUTCOME_EXPIRED,
    C.COMMAND_OUTCOME_NOT_OWNER,
}
# outcomes where it may or may not have applied it
UNKNOWN = {C.COMMAND_OUTCOME_TIMEOUT, C.COMMAND_OUTCOME_CALL_ERROR, C.COMMAND_OUTCOME_UNSPECIFIED}
# outcomes that make a station fail-safe for a while (not superseded: a newer one won, that is fine)
FAILING = {
    C.COMMAND_OUTCOME_REJECTED,
    C.COMMAND_OUTCOME_OFFLINE,
    C.COMMAND_OUTCOME_INVALID,
    C.COMMAND_OUTCOME_TIMEOUT,
    C.COMMAND_OUTCOME_CALL_ERROR,
    C.COMMAND_OUTCOME_NOT_OWNER,
    C.COMMAND_OUTCOME_EXPIRED,
}


class LeaseState(Enum):
    NONE = "none"
    ACTIVE = "active"
    RENEWING = "renewing"
    EXPIRED = "expired"
    FAILSAFE = "failsafe"


@dataclass
class Sent:
    """A profile command sent and not answered yet (or answered with an unknown outcome)."""

    command_id: str
    key: str  # command key (profile slot)
    purpose: int  # ProfilePurpose
    evse_id: int
    cap_a: float  # highest per-phase current the profile allows
    valid_until: float  # POSIX s; inf = no end
    sent_at: float
    schedule: tuple[tuple[float, float], ...] = ()  # (from POSIX s, A) steps; () = cap_a throughout
    # per station phase L1, L2, L3: the most the station may draw there per A of the limit (a W limit bounds
    # the total, so a single-phase car may draw more than the per-phase equivalent on L1); () = 1 on each
    weights: tuple[float, ...] = ()

    def limit_at(self, t: float) -> float:
        """Per-phase limit (A) the profile sets at time ``t`` (the first step also covers earlier times)."""
        if not self.schedule:
            return self.cap_a
        cur = self.schedule[0][1]
        for start, a in self.schedule:
            if start > t:
                break
            cur = a
        return cur

    def steps_between(self, t0: float, t1: float) -> list[float]:
        """Times in (t0, t1) at which the limit changes (POSIX s)."""
        return [start for start, _a in self.schedule if t0 < start < t1]


@dataclass
class StationLedger:
    """Profile state of one station as far as the allocator can know it."""

    station_id: str
    fallback_a: float
    hw_max_a: float
    online: bool = False
    replica: str = ""  # gateway replica that holds the connection (from Connected)
    fallback_installed: bool = False
    accepted: dict[str, Sent] = field(default_factory=dict)  # per command key: last accepted
    pending: dict[str, Sent] = field(default_factory=dict)  # per command id
    uncertain: dict[str, Sent] = field(default_factory=dict)  # per command id: fate unknown
    failed_at: float | None = None
    last_failure: str = ""
    expired: set[str] = field(default_factory=set)  # lease slots whose grant lapsed unrenewed
    skew_s: float = 0.0  # station clocks are trusted to ± this (s)
    phases: int = 3  # phases the station is wired to (its L1, L2, L3 in that order)

    def floor_a(self, t: float | None = None) -> float:
        """What the station may draw once every lease lapsed (A): its fallback at time ``t``.

        Without ``t``: the highest value the installed fallback takes at any time. A fallback known
        installed (e.g. after a restart) but not its schedule counts at its nominal value, the highest.
        """
        if not self.fallback_installed:
            return self.hw_max_a
        fb = self.accepted.get(FALLBACK_KEY)
        if fb is None:
            return self.fallback_a
        if t is None:
            return max(a for _s, a in fb.schedule) if fb.schedule else fb.cap_a
        return fb.limit_at(t)

    def floor_max_a(self, t0: float, t1: float) -> float:
        """Highest floor between ``t0`` and ``t1`` (A), counting a new fallback still in flight."""
        vals = [self.floor_a(t) for t in [t0, *self.floor_steps(t0, t1)]]
        if self.pending or self.uncertain:
            for s in [*self.pending.values(), *self.uncertain.values()]:
                if s.key == FALLBACK_KEY:
                    vals += [s.limit_at(t) for t in [t0, *s.steps_between(t0, t1)]]
        return min(self.hw_max_a, max(vals))

    def floor_worst_a(self, t: float) -> float:
        """Highest floor at time ``t`` (A): the installed fallback or one still in flight."""
        vals = [self.floor_a(t)]
        vals += [s.limit_at(t) for s in [*self.pending.values(), *self.uncertain.values()] if s.key == FALLBACK_KEY]
        return min(self.hw_max_a, max(vals))

    def change_times(self, t0: float, t1: float) -> list[float]:
        """Times in (t0, t1) where the floor may change: steps of the installed or an in-flight fallback."""
        times = set(self.floor_steps(t0, t1))
        for s in [*self.pending.values(), *self.uncertain.values()]:
            if s.key == FALLBACK_KEY:
                times.update(s.steps_between(t0, t1))
        return sorted(times)

    def floor_min_a(self, t0: float, t1: float) -> float:
        """Lowest installed floor between ``t0`` and ``t1`` (A): what a car may count on in that span."""
        return min(self.floor_a(t) for t in [t0, *self.floor_steps(t0, t1)])

    def floor_steps(self, t0: float, t1: float) -> list[float]:
        """Times in (t0, t1) where the installed fallback changes (POSIX s)."""
        fb = self.accepted.get(FALLBACK_KEY)
        return fb.steps_between(t0, t1) if fb is not None and self.fallback_installed else []

    def lease_value_ph(self, lease: Sent, t: float) -> list[float]:
        """Per station phase, the current (A) a station under ``lease`` may draw at ``t`` (`_lease_value_a` with
        the lease's weight on each phase)."""
        w = lease.weights
        return [self._lease_value_a(lease, t, w[p] if p < len(w) else 1.0) for p in range(self.phases)]

    def _lease_value_a(self, lease: Sent, t: float, weight: float = 1.0) -> float:
        """The current (A) a station under ``lease`` may draw at ``t`` on a phase where the lease counts ``weight``
        per A: the lease while surely valid, the floor once surely lapsed, the higher of the two while the
        station's clock may say either."""
        floor = self.floor_worst_a(t)
        if t >= lease.valid_until + self.skew_s:
            return floor
        a = min(self.hw_max_a, lease.limit_at(t) * weight)
        return a if t < lease.valid_until - self.skew_s else max(a, floor)

    def lease_candidates(self) -> list[Sent]:
        """Station-cap leases that may be in force: in flight, of unknown fate (the accepted one apart)."""
        return [
            s
            for s in [*self.pending.values(), *self.uncertain.values()]
            if s.purpose == C.PROFILE_PURPOSE_STATION_MAX and math.isfinite(s.valid_until)
        ]

    def worst_case_ph(self, t: float) -> list[float]:
        """Per station phase, the highest current (A) the station may draw at ``t`` whatever happened to our
        commands.

        Each possible state counts: the accepted lease (or none: the floor), and every lease in flight or
        of unknown fate as if it were the one the station applied last.
        """
        acc = self.accepted.get(LEASE_KEY)
        cands = self.lease_candidates()
        if (acc is None or not acc.weights) and not any(s.weights for s in cands):
            # every lease in A (the common case): the same value on every phase, computed once
            one = [self._lease_value_a(acc, t) if acc is not None else self.floor_worst_a(t)]
            one += [self._lease_value_a(s, t) for s in cands]
            return [min(self.hw_max_a, max(one))] * self.phases
        vals = [self.lease_value_ph(acc, t) if acc is not None else [self.floor_worst_a(t)] * self.phases]
        vals += [self.lease_value_ph(s, t) for s in cands]
        return [min(self.hw_max_a, max(v[p] for v in vals)) for p in range(self.phases)]

    def worst_case_a(self, t: float) -> float:
        """Highest current (A) the station may draw at ``t`` on any of its phases (`worst_case_ph`)."""
        return max(self.worst_case_ph(t))

    def settled_worst_case_ph(self, t: float) -> list[float]:
        """The worst case at ``t`` (A per station phase) once the newest lease in flight is accepted: what the
        budget's over-capacity check counts, so a lowering already on its way is not made a second time while
        its answer is still travelling (raises keep counting ``worst_case_ph``). Leases of unknown fate still
        count; should the one in flight fail, the next cycle sees it in ``worst_case_ph`` again."""
        fly = [s for s in self.pending.values() if s.key == LEASE_KEY and math.isfinite(s.valid_until)]
        if not fly:
            return self.worst_case_ph(t)
        vals = [self.lease_value_ph(max(fly, key=lambda s: s.sent_at), t)]
        vals += [
            self.lease_value_ph(s, t)
            for s in self.uncertain.values()
            if s.purpose == C.PROFILE_PURPOSE_STATION_MAX and math.isfinite(s.valid_until)
        ]
        return [min(self.hw_max_a, max(v[p] for v in vals)) for p in range(self.phases)]

    def settled_worst_case_a(self, t: float) -> float:
        """Highest phase of `settled_worst_case_ph`."""
        return max(self.settled_worst_case_ph(t))

    def lease_edges(self, t0: float, t1: float) -> list[float]:
        """Times in (t0, t1) at which a lease that may be in force may start or stop counting (its end ± skew)."""
        out = set()
        for s in [self.accepted.get(LEASE_KEY), *self.lease_candidates()]:
            if s is None:
                continue
            for e in (s.valid_until - self.skew_s, s.valid_until + self.skew_s):
                if t0 < e < t1:
                    out.add(e)
        return sorted(out)

    def held_a(self, now: float) -> float:
        """The station cap we last asked for (A): the newest lease in flight, else the accepted one while
        valid, else the floor now (no lease in force)."""
        lease = self._held(now)
        return lease.limit_at(now) if lease is not None else self.floor_a(now)

    def held_ph(self, now: float) -> list[float]:
        """Per station phase, what the station cap we last asked for lets the station draw (A): `held_a` with
        that lease's weights (a lease in W on one phase counts more than its cap on L1)."""
        lease = self._held(now)
        if lease is None:
            return [self.floor_a(now)] * self.phases
        a, w = lease.limit_at(now), lease.weights or (1.0,) * self.phases
        return [min(self.hw_max_a, a * (w[p] if p < len(w) else 1.0)) for p in range(self.phases)]

    def _held(self, now: float) -> Sent | None:
        """The lease `held_a` reads (None: no lease in force, the floor)."""
        fly = [s for s in self.pending.values() if s.key == LEASE_KEY]
        if fly:
            return max(fly, key=lambda s: s.sent_at)
        acc = self.accepted.get(LEASE_KEY)
        if acc is not None and now < acc.valid_until:
            return acc
        # no accepted lease: a previous run's (restored after a restart) is the last thing asked of the
        # station while it may be in force, so a raise goes out to undo a lower one (a lease the profile
        # check found missing, or one never answered, is not: the next plan sends what it wants)
        unsure = [
            s
            for s in self.uncertain.values()
            if s.key == LEASE_KEY and s.command_id.startswith(RESTORED_PREFIX) and now < s.valid_until
        ]
        if unsure:
            return max(unsure, key=lambda s: s.sent_at)
        return None

    def least_a(self, t: float) -> float:
        """Lowest per-phase current (A) the station may hold its cars to at ``t`` whatever happened to our
        commands: what a car there can surely draw. A car drawing less than a cap that may not be in force
        (a lease in flight, one of unknown fate, a previous run's) says nothing about the car."""
        floors = [self.floor_a(t)]
        floors += [s.limit_at(t) for s in [*self.pending.values(), *self.uncertain.values()] if s.key == FALLBACK_KEY]
        low_floor = min(floors)

        def lowest(lease: Sent) -> float:
            if t < lease.valid_until - self.skew_s:
                return lease.limit_at(t)
            if t >= lease.valid_until + self.skew_s:
                return low_floor
            return min(lease.limit_at(t), low_floor)

        acc = self.accepted.get(LEASE_KEY)
        vals = [lowest(acc) if acc is not None else low_floor]
        vals += [lowest(s) for s in self.lease_candidates()]
        return max(0.0, min(self.hw_max_a, min(vals)))

    def in_failsafe(self, now: float, hold_s: float) -> bool:
        """Not to be planned: offline, fallback unknown, or a command failed within ``hold_s``."""
        if not self.online or not self.fallback_installed:
            return True
        return self.failed_at is not None and now - self.failed_at < hold_s

    def expire(self, now: float, timeout_s: float) -> list[Sent]:
        """Commands unanswered for ``timeout_s`` become uncertain; leases that surely lapsed are forgotten."""
        late = [s for s in self.pending.values() if now - s.sent_at >= timeout_s]
        for s in late:
            del self.pending[s.command_id]
            self.uncertain[s.command_id] = s
            self.failed_at, self.last_failure = now, "no result"
        gone = now - self.skew_s  # a lease ending before this has lapsed by every clock we trust
        for cid in [c for c, s in self.uncertain.items() if s.valid_until <= gone]:
            del self.uncertain[cid]
        for k in [k for k, s in self.accepted.items() if s.valid_until <= gone]:
            if self.accepted.pop(k).cap_a > self.fallback_a + 1e-9:
                self.expired.add(k)  # a grant lapsed without renewal (a lease at the fallback may lapse)
        return late

    def lease_state(self, key: str, now: float, renew_lead_s: float) -> LeaseState:
        """State of the lease in profile slot ``key`` (for metrics): renewing within ``renew_lead_s`` of its end."""
        if any(s.key == key for s in self.uncertain.values()):
            return LeaseState.FAILSAFE
        acc = self.accepted.get(key)
        if acc is None:
            return LeaseState.NONE
        if acc.valid_until <= now:
            return LeaseState.EXPIRED
        if math.isfinite(acc.valid_until) and acc.valid_until - now <= renew_lead_s:
            return LeaseState.RENEWING
        return LeaseState.ACTIVE

    def sent(self, s: Sent) -> None:
        self.pending[s.command_id] = s

    def result(self, command_id: str, outcome: int, now: float) -> Sent | None:
        """Apply a command result; returns the command it answers (None if unknown/late duplicate)."""
        s = self.pending.pop(command_id, None) or self.uncertain.pop(command_id, None)
        if s is None:
            return None
        if outcome == C.COMMAND_OUTCOME_ACCEPTED:
            prev = self.accepted.get(s.key)
            # a late answer to an older command must not replace a newer accepted one
            if prev is None or prev.sent_at <= s.sent_at:
                self.accepted[s.key] = s
                self.expired.discard(s.key)
            if s.purpose == C.PROFILE_PURPOSE_STATION_MAX and not math.isfinite(s.valid_until):
                self.fallback_installed = True
            # an older, unanswered lease in the same slot has been replaced by this one
            for cid in [c for c, u in self.uncertain.items() if u.key == s.key and u.sent_at <= s.sent_at]:
                del self.uncertain[cid]
        elif outcome in UNKNOWN:
            self.uncertain[s.command_id] = s
        if outcome in FAILING:
            self.failed_at = now
            known = outcome in C.CommandOutcome.values()
            self.last_failure = C.CommandOutcome.Name(C.CommandOutcome.ValueType(outcome)) if known else "?"
        return s

    def went_offline(self, now: float) -> None:
        """The link is gone: everything in flight may or may not have arrived."""
        self.online = False
        for cid, s in list(self.pending.items()):
            self.uncertain[cid] = s
        self.pending.clear()
        self.failed_at, self.last_failure = now, "offline"

    def rebooted(self) -> None:
        """A fresh boot: profiles with an end are gone (the station max fallback persists by spec).

        Kept conservative: leases that may have survived still count until their end.
        """
        self.online = True
