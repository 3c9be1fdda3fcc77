"""When station-cap leases end and how often a station's profiles may be written (pure, no I/O).

**Aligned lease epochs.** Every station-cap lease ends on a common wall-clock boundary (a multiple of
``epoch_s``), so at any moment either every grant of an epoch is in force or every one has lapsed.
A lease *below* the station's fallback (an idle station or a paused car giving its floor to the others)
ends ``lowered_extra_s`` after the boundary, a lease above it on the boundary: with station clocks within
± ``clock_skew_s`` of ours, every raised grant has lapsed before any lowered one does, so the floors freed
while the allocator is alive are never counted twice when it dies. A lease sent within ``renew_lead_s``
of a boundary runs to the next one; renewals go out in that window, lowered leases first (they make room
for the raised ones).

**Write budget.** Chargers store profiles in flash. A station's profiles are written only when that changes
something: a lowering at once, a raise only ``raise_hold_s`` after the station's last lowering, by at least
``raise_min_step_a`` and at most every ``min_interval_s``; beyond ``max_per_hour`` writes in the last hour
(renewals included) only lowerings and renewals go out. Renewals are one write per lease per epoch.

Times are POSIX seconds, currents A per phase.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LeasePolicy:
    """Lease timing (s). With the defaults a lease lasts 5–26.5 min and costs 3 writes an hour."""

    epoch_s: float = 1200.0  # leases end on multiples of this (wall clock, UTC)
    renew_lead_s: float = 240.0  # renewals go out this long before the boundary
    clock_skew_s: float = 30.0  # station clocks are trusted to ± this

    def __post_init__(self) -> None:
        if not (
            self.epoch_s > 0
            and 0 < self.renew_lead_s < self.epoch_s
            and self.clock_skew_s >= 0
            and self.renew_lead_s + self.lowered_first_s + self.lowered_extra_s < self.epoch_s
        ):
            raise ValueError(f"inconsistent lease timing: {self}")

    @property
    def lowered_extra_s(self) -> float:
        """A lease below the floor outlives the raised ones by this (> 2 × skew)."""
        return 3.0 * self.clock_skew_s

    @property
    def lowered_first_s(self) -> float:
        """Lowered leases are renewed this much earlier than raised ones (they make room for them)."""
        return self.renew_lead_s / 4.0

    def is_lowered_end(self, valid_until: float) -> bool:
        """Whether a lease ending at ``valid_until`` is a lowered one (it ends ``lowered_extra_s`` after a
        boundary)."""
        return self.lowered_extra_s > 0 and abs(valid_until % self.epoch_s - self.lowered_extra_s) < 1.0

    def boundary_after(self, t: float) -> float:
        """The first epoch boundary strictly after ``t``."""
        return (math.floor(t / self.epoch_s) + 1.0) * self.epoch_s

    def lease_end(self, now: float, lowered: bool, after: float = -math.inf) -> float:
        """``valid_to`` of a lease sent at ``now``: the coming boundary, or the next one inside its renewal
        window (a lease is never sent due at once); a lowered lease ``lowered_extra_s`` later; and later
        than ``after`` (a renewal outlives the lease it renews)."""
        b = self.boundary_after(now)
        if b - now <= self.renew_lead_s + self.lowered_first_s:
            b += self.epoch_s
        end = b + (self.lowered_extra_s if lowered else 0.0)
        while end <= after:
            end += self.epoch_s
        return end

    def renewal_due(self, valid_until: float, now: float, lowered: bool) -> bool:
        """Whether a lease ending at ``valid_until`` must be renewed now to stay in force next epoch."""
        boundary = valid_until - (self.lowered_extra_s if lowered else 0.0)
        lead = self.renew_lead_s + (self.lowered_first_s if lowered else 0.0)
        return now >= boundary - lead

    def renewal_may_wait(self, valid_until: float, now: float, lowered: bool) -> bool:
        """Whether a due renewal may still wait a cycle or two (the first half of its window): for room
        that is being freed, so it is written once at the value wanted."""
        boundary = valid_until - (self.lowered_extra_s if lowered else 0.0)
        lead = self.renew_lead_s + (self.lowered_first_s if lowered else 0.0)
        return now < boundary - lead / 2.0

    @property
    def max_lease_s(self) -> float:
        """Longest a lease can run from the moment it is sent."""
        return self.epoch_s + self.renew_lead_s + self.lowered_first_s + self.lowered_extra_s


@dataclass(frozen=True)
class WritePolicy:
    """The per-station write budget (s, A, writes)."""

    min_interval_s: float = 60.0  # between two writes to one station, lowerings and renewals apart
    max_per_hour: int = 6  # beyond this many writes in the last hour only lowerings and renewals
    raise_hold_s: float = 60.0  # no raise within this of the station's last lowering
    raise_min_step_a: float = 1.0  # a raise smaller than this waits for the renewal
    lower_min_step_a: float = 1.0  # a lowering the budget does not need, smaller than this, too


@dataclass
class WriteLog:
    """SetChargingProfile writes per station: what the write budget and the metrics look at.

    Every write counts towards the hour; the minimum interval runs from the last write that was not for
    safety (a fallback, a lowering): those never wait and never make a raise wait longer than the hold.
    """

    policy: WritePolicy = field(default_factory=WritePolicy)
    times: dict[str, deque[float]] = field(default_factory=dict)
    last_change: dict[str, float] = field(default_factory=dict)
    last_lowering: dict[str, float] = field(default_factory=dict)

    def record(self, station_id: str, now: float, kind: str = "change") -> None:
        """One write: ``kind`` is "change" (a raise, a renewal), "lowering" or "safety" (a fallback)."""
        q = self.times.setdefault(station_id, deque())
        q.append(now)
        while q and q[0] <= now - 3600.0:
            q.popleft()
        if kind == "lowering":
            self.last_lowering[station_id] = now
        elif kind == "change":
            self.last_change[station_id] = now

    def last_hour(self, station_id: str, now: float) -> int:
        q = self.times.get(station_id)
        return 0 if not q else sum(1 for t in q if t > now - 3600.0)

    def why_not_change(self, station_id: str, now: float) -> str:
        """'' when a change that is not a lowering may be written now, else why not (interval | budget)."""
        if now - self.last_change.get(station_id, -math.inf) < self.policy.min_interval_s:
            return "interval"
        if self.last_hour(station_id, now) >= self.policy.max_per_hour:
            return "budget"
        return ""

    def why_not_raise(self, station_id: str, now: float) -> str:
        """'' when a raise may be written now, else why not (hold | interval | budget)."""
        if now - self.last_lowering.get(station_id, -math.inf) < self.policy.raise_hold_s:
            return "hold"
        return self.why_not_change(station_id, now)

    def per_hour(self, now: float, station_ids: list[str]) -> list[int]:
        """Writes in the last hour of each of ``station_ids`` (for the metrics)."""
        return [self.last_hour(s, now) for s in station_ids]
