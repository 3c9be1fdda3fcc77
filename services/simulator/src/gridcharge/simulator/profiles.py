"""A spec-faithful charging-profile store and composite-schedule evaluator (OCPP 1.6J and 2.0.1).

Pure: no I/O, time is passed in (POSIX seconds). What it implements, following OCPP 1.6 §3.13 and
2.0.1 K01/K08:

- purposes ChargePointMax (1.6) / ChargingStationMax (2.0.1) on EVSE 0, TxDefault on EVSE 0 or one
  EVSE (an EVSE's own TxDefault overrides the station-wide one), Tx bound to the running transaction;
- a profile replaces an installed one with the same id, or the same purpose + stack level + EVSE;
- validFrom/validTo, startSchedule and duration; Absolute, Relative (from the transaction start) and
  Recurring (Daily/Weekly) kinds;
- within a purpose the highest stack level *active at that moment* wins, so when a Tx lease expires the
  limit falls back to TxDefault, then to the station maximum;
- Tx overrides TxDefault; the station maximum caps the station total;
- no profile at all means no limit (None), which is what a real station does when offline without one.

Limits come back in A per phase (W are converted at the given voltage and phase count).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

Purpose = Literal["StationMax", "TxDefault", "Tx"]
Kind = Literal["Absolute", "Relative", "Recurring"]
RateUnit = Literal["A", "W"]

_PURPOSES: dict[str, Purpose] = {
    "ChargePointMaxProfile": "StationMax",
    "ChargingStationMaxProfile": "StationMax",
    "TxDefaultProfile": "TxDefault",
    "TxProfile": "Tx",
}
OCPP16_PURPOSE: dict[Purpose, str] = {
    "StationMax": "ChargePointMaxProfile",
    "TxDefault": "TxDefaultProfile",
    "Tx": "TxProfile",
}
OCPP201_PURPOSE: dict[Purpose, str] = {
    "StationMax": "ChargingStationMaxProfile",
    "TxDefault": "TxDefaultProfile",
    "Tx": "TxProfile",
}
_RECURRENCE_S = {"Daily": 86_400, "Weekly": 7 * 86_400}


class ProfileError(ValueError):
    """A profile the station must reject (malformed, or not allowed in the current state)."""


@dataclass(frozen=True, slots=True)
class Period:
    start_s: int
    limit: float  # in the profile's rate unit (A per phase, or W total)
    number_phases: int | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    """One installed charging profile, version-neutral."""

    profile_id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    rate_unit: RateUnit
    periods: tuple[Period, ...]
    evse_id: int = 0
    transaction_id: str | None = None
    recurrency: str | None = None
    valid_from: float | None = None  # POSIX s
    valid_to: float | None = None
    start_schedule: float | None = None
    duration_s: float | None = None
    min_rate: float | None = None
    installed_at: float = 0.0


def _ts(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ProfileError(f"bad timestamp {str(value)[:40]!r}") from exc
    if dt.tzinfo is None:
        raise ProfileError("timestamp without time zone")
    return dt.timestamp()


def parse_ocpp_profile(data: dict[str, Any], evse_id: int, now_s: float) -> Profile:
    """Build a Profile from an OCPP 1.6 `csChargingProfiles` or 2.0.1 `chargingProfile` (snake_case keys)."""
    try:
        pid = int(data.get("charging_profile_id", data.get("id")))  # type: ignore[arg-type]  # None -> TypeError
        purpose = _PURPOSES[str(data["charging_profile_purpose"])]
        kind_raw = str(data["charging_profile_kind"])
        if kind_raw not in ("Absolute", "Relative", "Recurring"):
            raise ProfileError(f"unknown kind {kind_raw[:20]!r}")
        kind: Kind = kind_raw  # type: ignore[assignment]
        sched = data["charging_schedule"]
        if isinstance(sched, list):  # 2.0.1: one or more schedules; we use the first
            if not sched:
                raise ProfileError("empty chargingSchedule")
            sched = sched[0]
        unit = str(sched["charging_rate_unit"])
        if unit not in ("A", "W"):
            raise ProfileError(f"unknown rate unit {unit[:10]!r}")
        periods = tuple(
            Period(
                int(p["start_period"]),
                float(p["limit"]),
                int(p["number_phases"]) if p.get("number_phases") is not None else None,
            )
            for p in sched["charging_schedule_period"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProfileError):
            raise
        raise ProfileError(f"malformed profile: {type(exc).__name__}") from exc
    if not periods or periods[0].start_s != 0:
        raise ProfileError("first schedule period must start at 0")
    if any(b.start_s <= a.start_s for a, b in itertools.pairwise(periods)):
        raise ProfileError("schedule periods must be in increasing start order")
    if any(p.limit < 0 or not math.isfinite(p.limit) for p in periods):
        raise ProfileError("negative or non-finite limit")
    tx = data.get("transaction_id")
    prof = Profile(
        profile_id=pid,
        stack_level=int(data.get("stack_level", 0)),
        purpose=purpose,
        kind=kind,
        rate_unit=unit,  # type: ignore[arg-type]
        periods=periods,
        evse_id=evse_id,
        transaction_id=str(tx) if tx is not None else None,
        recurrency=data.get("recurrency_kind"),
        valid_from=_ts(data.get("valid_from")),
        valid_to=_ts(data.get("valid_to")),
        start_schedule=_ts(sched.get("start_schedule")),
        duration_s=float(sched["duration"]) if sched.get("duration") is not None else None,
        min_rate=float(sched["min_charging_rate"]) if sched.get("min_charging_rate") is not None else None,
        installed_at=now_s,
    )
    if prof.stack_level < 0:
        raise ProfileError("negative stack level")
    if prof.kind == "Recurring" and prof.recurrency not in _RECURRENCE_S:
        raise ProfileError("Recurring profile needs recurrencyKind Daily or Weekly")
    return prof


def to_amps(limit: float, unit: RateUnit, phases: int, voltage_v: float) -> float:
    """Per-phase current A of a limit in A (per phase) or W (total over `phases`)."""
    if unit == "A":
        return limit
    return limit / (voltage_v * max(1, phases))


@dataclass
class Transaction:
    transaction_id: str
    evse_id: int
    started_at: float


@dataclass
class ProfileStore:
    """The profiles installed in one station, and the rules for installing and evaluating them."""

    max_stack_level: int = 8
    ignore_valid_to: bool = False  # quirk: a station that never lets leases expire
    profiles: list[Profile] = field(default_factory=list)

    # -- installing ------------------------------------------------------------------------------
    def install(self, profile: Profile, tx: Transaction | None) -> None:
        """Install per the spec's replacement rules; raise ProfileError where the station must reject."""
        if profile.stack_level > self.max_stack_level:
            raise ProfileError(f"stack level {profile.stack_level} above the maximum {self.max_stack_level}")
        if profile.purpose == "StationMax" and profile.evse_id != 0:
            raise ProfileError("station maximum profile only on EVSE 0")
        if profile.purpose == "Tx":
            if profile.evse_id == 0:
                raise ProfileError("TxProfile needs a specific EVSE")
            if tx is None or tx.evse_id != profile.evse_id:
                raise ProfileError("TxProfile without an active transaction on that EVSE")
            if profile.transaction_id is not None and profile.transaction_id != tx.transaction_id:
                raise ProfileError("TxProfile for another transaction")
            profile = replace(profile, transaction_id=tx.transaction_id)
        self.profiles = [
            p
            for p in self.profiles
            if p.profile_id != profile.profile_id
            and not (
                p.purpose == profile.purpose and p.stack_level == profile.stack_level and p.evse_id == profile.evse_id
            )
        ]
        self.profiles.append(profile)

    def clear(
        self,
        profile_id: int | None = None,
        evse_id: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> bool:
        """ClearChargingProfile: remove matching profiles; True if any was removed."""

        def match(p: Profile) -> bool:
            if profile_id is not None:
                return p.profile_id == profile_id
            return (
                (evse_id is None or p.evse_id == evse_id)
                and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level)
            )

        before = len(self.profiles)
        self.profiles = [p for p in self.profiles if not match(p)]
        return len(self.profiles) != before

    def end_transaction(self, transaction_id: str) -> None:
        """Tx profiles die with their transaction."""
        self.profiles = [p for p in self.profiles if not (p.purpose == "Tx" and p.transaction_id == transaction_id)]

    def forget_all(self) -> None:
        self.profiles = []

    # -- evaluating ------------------------------------------------------------------------------
    def _period_at(self, p: Profile, t: float, tx: Transaction | None) -> Period | None:
        """The period of `p` in force at `t`, or None when the profile does not apply then."""
        if p.valid_from is not None and t < p.valid_from:
            return None
        if p.valid_to is not None and t >= p.valid_to and not self.ignore_valid_to:
            return None
        if p.kind == "Relative":
            if tx is None:
                return None
            start = tx.started_at
        elif p.kind == "Recurring":
            base = p.start_schedule if p.start_schedule is not None else p.installed_at
            rec = _RECURRENCE_S[p.recurrency or "Daily"]
            start = base + math.floor((t - base) / rec) * rec
        else:
            start = (
                p.start_schedule
                if p.start_schedule is not None
                else (p.valid_from if p.valid_from is not None else p.installed_at)
            )
        elapsed = t - start
        if elapsed < 0:
            return None
        if p.duration_s is not None and elapsed >= p.duration_s and not (self.ignore_valid_to and p.purpose == "Tx"):
            return None
        current: Period | None = None
        for per in p.periods:
            if per.start_s <= elapsed:
                current = per
            else:
                break
        return current

    def _winner(self, candidates: list[Profile], t: float, tx: Transaction | None) -> tuple[Profile, Period] | None:
        best: tuple[Profile, Period] | None = None
        for p in candidates:
            per = self._period_at(p, t, tx)
            if per is not None and (best is None or p.stack_level > best[0].stack_level):
                best = (p, per)
        return best

    def evse_limit_a(
        self, evse_id: int, t: float, tx: Transaction | None, phases: int, voltage_v: float
    ) -> tuple[float | None, int | None, str]:
        """Per-phase current limit A for one EVSE from Tx/TxDefault profiles (None = no limit), the
        phase count the period allows (None = not restricted), and which purpose set it."""
        tx_here = tx if tx is not None and tx.evse_id == evse_id else None
        won: tuple[Profile, Period] | None = None
        if tx_here is not None:
            won = self._winner(
                [
                    p
                    for p in self.profiles
                    if p.purpose == "Tx" and p.evse_id == evse_id and p.transaction_id == tx_here.transaction_id
                ],
                t,
                tx_here,
            )
        if won is None:
            won = self._winner(
                [p for p in self.profiles if p.purpose == "TxDefault" and p.evse_id == evse_id], t, tx_here
            )
        if won is None:
            won = self._winner([p for p in self.profiles if p.purpose == "TxDefault" and p.evse_id == 0], t, tx_here)
        if won is None:
            return None, None, "none"
        prof, per = won
        n = per.number_phases or phases
        return to_amps(per.limit, prof.rate_unit, n, voltage_v), per.number_phases, prof.purpose

    def station_limit(self, t: float) -> tuple[float, RateUnit] | None:
        """The station maximum profile's limit in force and its unit (A per phase, W total), None = no limit."""
        won = self._winner([p for p in self.profiles if p.purpose == "StationMax"], t, None)
        if won is None:
            return None
        prof, per = won
        return per.limit, prof.rate_unit

    def station_limit_a(self, t: float, phases: int, voltage_v: float) -> float | None:
        """Per-phase current limit A of the whole station (station maximum profile), None = no limit."""
        won = self._winner([p for p in self.profiles if p.purpose == "StationMax"], t, None)
        if won is None:
            return None
        prof, per = won
        return to_amps(per.limit, prof.rate_unit, per.number_phases or phases, voltage_v)

    def station_max_stack(self, t: float) -> int | None:
        """Stack level of the station maximum profile in force at ``t`` (None = none): above 0 it is a lease
        over the fallback."""
        won = self._winner([p for p in self.profiles if p.purpose == "StationMax"], t, None)
        return won[0].stack_level if won is not None else None

    def composite_schedule(
        self,
        evse_id: int,
        start_s: float,
        duration_s: int,
        tx: Transaction | None,
        phases: int,
        voltage_v: float,
        step_s: int = 60,
    ) -> list[tuple[int, float]]:
        """GetCompositeSchedule: (offset s, limit A) change points over the window, sampled every `step_s`.

        No limit at all is reported as the station's `phases`-independent infinity-free cap 0 → omitted;
        callers fill in their hardware maximum.
        """
        out: list[tuple[int, float]] = []
        last: float | None = None
        for off in range(0, max(1, duration_s), step_s):
            t = start_s + off
            ev, _, _ = self.evse_limit_a(evse_id, t, tx, phases, voltage_v) if evse_id else (None, None, "")
            st = self.station_limit_a(t, phases, voltage_v)
            vals = [v for v in (ev, st) if v is not None]
            lim = min(vals) if vals else math.inf
            if lim != last:
                out.append((off, lim))
                last = lim
        return out
