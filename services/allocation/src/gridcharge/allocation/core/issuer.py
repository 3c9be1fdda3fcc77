"""Lease and command issuing: every SetChargingProfile the allocator sends goes through here (pure, no I/O).

It builds the payload (`profiles.py`), records the command in the station's ledger (so the worst case
counts it at once) and in the write log (the per-station write budget), and remembers command ids so a
command seen again on the bus (sent by a previous leader) is not counted twice.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from gridcharge.allocation.core import profiles as P
from gridcharge.allocation.core.failsafe import FALLBACK_KEY, LEASE_KEY, Sent, StationLedger
from gridcharge.allocation.core.leases import LeasePolicy, WriteLog
from gridcharge.allocation.core.sessions import SessionState
from gridcharge.command.v1 import command_pb2
from gridcharge.shared.topology import Topology

STATION_MAX = command_pb2.PROFILE_PURPOSE_STATION_MAX


def when(t: float) -> datetime:
    """POSIX seconds → aware UTC datetime (the form profile payloads are built from)."""
    return datetime.fromtimestamp(t, UTC)


@dataclass(frozen=True)
class ProfileCommand:
    """A SetChargingProfile for the gateway (the service adds generation and envelope)."""

    command_id: str
    station_id: str
    command_key: str
    purpose: str  # fallback | station_lease | tx_profile (metrics label)
    payload: command_pb2.SetChargingProfile
    expires_at: datetime
    reason: str = ""  # boot | raise | lower | renewal | limiter | retry (metrics label)


@dataclass
class StationCaps:
    """What a station said it can do with profiles (StationCapabilities)."""

    allowed_rate_units: tuple[int, ...] = ()
    max_periods: int = 24


@dataclass
class CommandIssuer:
    """Builds, records and counts the profile commands of one topology's stations."""

    topology: Topology
    ledgers: dict[str, StationLedger]
    policy: LeasePolicy
    writes: WriteLog
    command_ttl_s: float = 30.0
    new_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)
    caps: dict[str, StationCaps] = field(default_factory=dict)
    tx_sent_a: dict[str, float] = field(default_factory=dict)  # session key -> last TxProfile limit (A)
    # stations whose next lease goes in W on one phase (a single-phase car at a multi-phase station that
    # accepts W): the budget then counts it per phase as `profiles.phase_weights` says, not on every phase
    one_phase: set[str] = field(default_factory=set)
    low_voltage: float = 0.9  # lowest voltage a W limit may meet, × nominal (phase_weights)
    _known_ids: deque[str] = field(default_factory=lambda: deque(maxlen=20000))
    _known_set: set[str] = field(default_factory=set)

    def target(self, station_id: str) -> P.StationProfileTarget:
        """How limits are written for this station: unit, phases, voltage, periods."""
        st = self.topology.station_by_id[station_id]
        c = self.caps.get(station_id, StationCaps())
        return P.StationProfileTarget(
            P.rate_unit_for(c.allowed_rate_units),
            len(st.phase_map),
            self.topology.nominal_voltage_v,
            max(1, c.max_periods),
        )

    def lease_target(self, station_id: str) -> P.StationProfileTarget:
        """How the station-cap lease is written: as `target`, except W on one phase for a station in
        ``one_phase`` (it must accept W)."""
        t = self.target(station_id)
        c = self.caps.get(station_id, StationCaps())
        if station_id in self.one_phase and P.RATE_W in c.allowed_rate_units and t.phases > 1:
            return replace(t, rate_unit=P.RATE_W, phases=1)
        return t

    def lease_weights(self, station_id: str) -> tuple[float, ...]:
        """Per station phase, what a lease sent now lets the station draw per A (`profiles.phase_weights`:
        1 on every phase for a lease in A)."""
        t = self.lease_target(station_id)
        wired = len(self.topology.station_by_id[station_id].phase_map)
        if t.rate_unit != P.RATE_W:
            return (1.0,) * wired
        return tuple(t.phases / (k * self.low_voltage) for k in range(1, wired + 1))

    def known(self, command_id: str) -> bool:
        return command_id in self._known_set

    def remember(self, command_id: str) -> None:
        if len(self._known_ids) == self._known_ids.maxlen:
            self._known_set.discard(self._known_ids[0])
        self._known_ids.append(command_id)
        self._known_set.add(command_id)

    def _record(
        self, station_id: str, payload: command_pb2.SetChargingProfile, valid_until: float, now: float, command_id: str
    ) -> None:
        prof = payload.profile
        tgt = self.target(station_id)
        sched = P.profile_schedule_a(payload, tgt) if prof.purpose == STATION_MAX else ()
        self.ledgers[station_id].sent(
            Sent(
                command_id,
                P.command_key(payload.evse_id, prof.purpose, prof.stack_level),
                prof.purpose,
                payload.evse_id,
                P.profile_limit_a(payload, tgt),
                valid_until,
                now,
                sched,
                P.phase_weights(payload, tgt, len(self.topology.station_by_id[station_id].phase_map), self.low_voltage)
                if prof.purpose == STATION_MAX
                else (),
            )
        )

    def _issue(
        self,
        station_id: str,
        purpose: str,
        reason: str,
        payload: command_pb2.SetChargingProfile,
        valid_until: float,
        now: float,
        kind: str,
    ) -> ProfileCommand:
        cid = self.new_id()
        self.remember(cid)
        self._record(station_id, payload, valid_until, now, cid)
        self.writes.record(station_id, now, kind)
        key = P.command_key(payload.evse_id, payload.profile.purpose, payload.profile.stack_level)
        return ProfileCommand(cid, station_id, key, purpose, payload, when(now + self.command_ttl_s), reason)

    def observe(
        self, station_id: str, command_id: str, payload: command_pb2.SetChargingProfile, sent_at: float
    ) -> bool:
        """A profile command seen on the bus (e.g. sent by the previous leader): count it as in flight."""
        if station_id not in self.ledgers or self.known(command_id):
            return False
        self.remember(command_id)
        prof = payload.profile
        valid_until = prof.valid_to.ToSeconds() if prof.HasField("valid_to") else math.inf
        self._record(station_id, payload, valid_until, sent_at, command_id)
        return True

    # ---------------------------------------------------------------- the three kinds of profile
    def fallback(
        self, station_id: str, payload: command_pb2.SetChargingProfile, now: float, reason: str = "boot"
    ) -> ProfileCommand:
        """The station-wide fallback (stack 0, no end); ``payload`` from ``profiles.fallback_profile``."""
        return self._issue(station_id, "fallback", reason, payload, math.inf, now, "safety")

    def station_lease(self, station_id: str, cap_a: float, now: float, reason: str) -> ProfileCommand:
        """The station-cap lease (stack 1) at ``cap_a`` until the epoch boundary (a lease below the floor
        a little later, see leases.py); a renewal until the boundary after the lease it renews."""
        led = self.ledgers[station_id]
        lowered = cap_a < led.floor_max_a(now, self.policy.lease_end(now, False)) - 1e-9
        cur = self.lease_in_flight(station_id) or led.accepted.get(LEASE_KEY)
        end = self.policy.lease_end(now, lowered, cur.valid_until if reason == "renewal" and cur else -math.inf)
        payload = P.station_lease_profile(cap_a, when(now), end - now, self.lease_target(station_id))
        kind = "lowering" if cap_a < led.held_a(now) - 0.05 else "change"
        return self._issue(station_id, "station_lease", reason, payload, end, now, kind)

    def tx_profile(self, s: SessionState, grant_a: float, now: float, reason: str) -> ProfileCommand:
        """The TxProfile of a session at a station with several EVSEs: splits the station cap between them.

        It has no end of its own: it dies with its transaction, and the station-cap lease above it bounds
        the station in time (when that lapses the fallback caps the station whatever the TxProfiles say).
        """
        payload = P.tx_profile(
            s.evse_id, s.transaction_id, [(when(now), grant_a)], when(now), None, self.target(s.station_id)
        )
        key = f"{s.station_id}/{s.evse_id}"
        kind = "lowering" if grant_a < self.tx_sent_a.get(key, math.inf) - 0.05 else "change"
        self.tx_sent_a[key] = P.quantise_a(grant_a)
        return self._issue(s.station_id, "tx_profile", reason, payload, math.inf, now, kind)

    # ---------------------------------------------------------------- state
    def lease_in_flight(self, station_id: str) -> Sent | None:
        pend = [p for p in self.ledgers[station_id].pending.values() if p.key == LEASE_KEY]
        return max(pend, key=lambda p: p.sent_at) if pend else None

    def fallback_in_flight(self, station_id: str) -> bool:
        return any(p.key == FALLBACK_KEY for p in self.ledgers[station_id].pending.values())

    def lease_record(self, station_id: str, now: float) -> tuple[float, float, list[float]] | None:
        """(highest cap A, latest end s, highest A per station phase) of the station-cap leases that may be in
        force, for persistence (a lease in W counts differently per phase: a restart must not forget it)."""
        led = self.ledgers[station_id]
        srcs = [
            s for s in [led.accepted.get(LEASE_KEY), *led.lease_candidates()] if s is not None and s.valid_until > now
        ]
        if not srcs:
            return None
        per_phase = [
            max(min(led.hw_max_a, s.cap_a * (s.weights[p] if p < len(s.weights) else 1.0)) for s in srcs)
            for p in range(led.phases)
        ]
        return max(s.cap_a for s in srcs), max(s.valid_until for s in srcs), per_phase
