"""What each station may draw at worst, from the fate of the commands sent to it (pure, no I/O).

Safety principle 3, "unknown means worst case", per station:

- the floor is the installed fallback (station max, stack 0) once a station accepted it, else the
  hardware maximum (a station without a known profile charges unconstrained). A fallback may be a
  schedule (lowered ahead of a DSO window or a base-load peak), so the floor is a function of time;
- on top of the floor, every station-cap lease that may be in force counts until its ``valid_to``:
  the accepted one, the ones sent and not answered yet, and those whose fate is unknown (timed out,
  CALLERROR). Leases bound the uncertainty in time: after ``valid_to`` the station is back at its floor;
- a rejected/failed/offline station is not planned for a while (``failsafe_hold_s``): it is budgeted at
  that worst case and the others are re-planned around it.

Times are POSIX seconds. Currents are per phase (A) on every phase the station is wired to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from gridcharge.allocation.core.profiles import FALLBACK_STACK, STATION_MAX, command_key
from gridcharge.command.v1 import command_pb2

C = command_pb2  # outcome enum values live on the module

FALLBACK_KEY = command_key(0, STATION_MAX, FALLBACK_STACK)

# outcomes where the station certainly did not apply the profile
NOT_APPLIED = {C.COMMAND_OUTCOME_REJECTED, C.COMMAND_OUTCOME_OFFLINE, C.COMMAND_OUTCOME_INVALID,
               C.COMMAND_OUTCOME_SUPERSEDED, C.COMMAND_OUTCOME_EXPIRED, C.COMMAND_OUTCOME_NOT_OWNER}
# outcomes where it may or may not have applied it
UNKNOWN = {C.COMMAND_OUTCOME_TIMEOUT, C.COMMAND_OUTCOME_CALL_ERROR, C.COMMAND_OUTCOME_UNSPECIFIED}
# outcomes that make a station fail-safe for a while (not superseded: a newer one won, that is fine)
FAILING = {C.COMMAND_OUTCOME_REJECTED, C.COMMAND_OUTCOME_OFFLINE, C.COMMAND_OUTCOME_INVALID,
           C.COMMAND_OUTCOME_TIMEOUT, C.COMMAND_OUTCOME_CALL_ERROR, C.COMMAND_OUTCOME_NOT_OWNER,
           C.COMMAND_OUTCOME_EXPIRED}


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
    key: str                      # command key (profile slot)
    purpose: int                  # ProfilePurpose
    evse_id: int
    cap_a: float                  # highest per-phase current the profile allows
    valid_until: float            # POSIX s; inf = no end
    sent_at: float
    schedule: tuple[tuple[float, float], ...] = ()   # (from POSIX s, A) steps; () = cap_a throughout

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
    replica: str = ""                  # gateway replica that holds the connection (from Connected)
    fallback_installed: bool = False
    accepted: dict[str, Sent] = field(default_factory=dict)     # per command key: last accepted
    pending: dict[str, Sent] = field(default_factory=dict)      # per command id
    uncertain: dict[str, Sent] = field(default_factory=dict)    # per command id: fate unknown
    failed_at: float | None = None
    last_failure: str = ""
    expired: set[str] = field(default_factory=set)             # lease slots whose grant lapsed unrenewed

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

    def _cap_sources(self, now: float) -> list[Sent]:
        out = [s for s in self.accepted.values() if s.purpose == C.PROFILE_PURPOSE_STATION_MAX]
        out += [s for s in self.pending.values() if s.purpose == C.PROFILE_PURPOSE_STATION_MAX]
        out += [s for s in self.uncertain.values() if s.purpose == C.PROFILE_PURPOSE_STATION_MAX]
        return [s for s in out if s.valid_until > now]

    def worst_case_a(self, now: float) -> float:
        """Highest per-phase current the station may draw now whatever happened to our commands."""
        caps = [self.floor_a(now)] + [s.limit_at(now) for s in self._cap_sources(now)]
        return min(self.hw_max_a, max(caps))

    def committed_a(self, now: float) -> float:
        """Like worst_case_a but ignoring commands still in flight (what is surely or maybe installed)."""
        srcs = [s for s in self.accepted.values() if s.purpose == C.PROFILE_PURPOSE_STATION_MAX]
        srcs += [s for s in self.uncertain.values() if s.purpose == C.PROFILE_PURPOSE_STATION_MAX]
        caps = [self.floor_a(now)] + [s.limit_at(now) for s in srcs if s.valid_until > now]
        return min(self.hw_max_a, max(caps))

    def uncertain_excess_a(self, now: float) -> float:
        """How far unknown-fate leases lift the worst case above what we control (A)."""
        known = [self.floor_a(now)] + [s.limit_at(now) for s in self.accepted.values()
                                       if s.purpose == C.PROFILE_PURPOSE_STATION_MAX and s.valid_until > now]
        unk = [s.limit_at(now) for s in self.uncertain.values()
               if s.purpose == C.PROFILE_PURPOSE_STATION_MAX and s.valid_until > now]
        return max(0.0, min(self.hw_max_a, max(known + unk)) - min(self.hw_max_a, max(known)))

    def in_failsafe(self, now: float, hold_s: float) -> bool:
        """Not to be planned: offline, fallback unknown, or a command failed within ``hold_s``."""
        if not self.online or not self.fallback_installed:
            return True
        return self.failed_at is not None and now - self.failed_at < hold_s

    def expire(self, now: float, timeout_s: float) -> list[Sent]:
        """Commands unanswered for ``timeout_s`` become uncertain; lapsed leases are forgotten."""
        late = [s for s in self.pending.values() if now - s.sent_at >= timeout_s]
        for s in late:
            del self.pending[s.command_id]
            self.uncertain[s.command_id] = s
            self.failed_at, self.last_failure = now, "no result"
        for d in (self.uncertain,):
            for cid in [c for c, s in d.items() if s.valid_until <= now]:
                del d[cid]
        for k in [k for k, s in self.accepted.items() if s.valid_until <= now]:
            if self.accepted.pop(k).cap_a > self.fallback_a + 1e-9:
                self.expired.add(k)   # a grant lapsed without renewal (a lease at the fallback may lapse)
        return late

    def lease_state(self, key: str, now: float, lease_s: float, renew_fraction: float) -> LeaseState:
        """State of the lease in profile slot ``key`` (for metrics and renewal)."""
        if any(s.key == key for s in self.uncertain.values()):
            return LeaseState.FAILSAFE
        acc = self.accepted.get(key)
        if acc is None:
            return LeaseState.NONE
        if acc.valid_until <= now:
            return LeaseState.EXPIRED
        if math.isfinite(acc.valid_until) and acc.valid_until - now <= lease_s * (1 - renew_fraction):
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
