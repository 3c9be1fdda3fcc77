"""Closed-loop profile check: the profiles a station reports against those gridcharge sent and it accepted.

A station that answers Accepted to a SetChargingProfile and then does not apply it (a firmware bug, a local
EMS or a second backend overwriting it, a profile lost on a reboot, an expired lease kept) breaks safety
principle 1 silently. The gateway therefore remembers, per station, every profile it sent that the station
accepted (`ProfileBook`: one per EVSE/purpose/stack level, as OCPP replaces them; cleared ones and the
TxProfiles of ended transactions removed) and compares it with what the station reports:

- `missing`: a profile of ours still valid is not in the station's ReportChargingProfiles (2.0.1/2.1);
- `higher_limit`: the station reports our profile with a limit above the one we sent (same unit), or
  in another unit than we sent (`altered`);
- `foreign`: a CSO profile at one of gridcharge's (purpose, stack level) slots with an id we never sent —
  it replaces ours by the OCPP stacking rules;
- `composite_higher`: the composite schedule (GetCompositeSchedule, also 1.6) allows more now than the
  lowest of our profiles in force (tolerance: 0.1 of the unit and 1 %), i.e. the station computes its
  limit without ours.

Pure: payloads are the validated OCPP JSON (camelCase), times POSIX seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.core.mapping import parse_time

KINDS = ("missing", "higher_limit", "altered", "foreign", "composite_higher")  # closed set: a metric label
STATION_MAX_NAMES = ("ChargePointMaxProfile", "ChargingStationMaxProfile")
MAX_BOOK = 64  # profiles remembered per station (a station holds a handful; bounds a hostile store)
MAX_REPORTED = 256  # reported profiles judged per check (bounds a hostile station)


def _ts(value: Any) -> float | None:
    dt = parse_time(value)
    return dt.timestamp() if dt is not None else None


def _purpose(name: str) -> str:
    """1.6 and 2.x spell the station maximum differently; compare on one name."""
    return "StationMax" if name in STATION_MAX_NAMES else name


@dataclass(frozen=True)
class SentProfile:
    """One profile as we sent it (limits in `rate_unit`, periods from `start_s`)."""

    evse_id: int
    profile_id: int
    stack_level: int
    purpose: str  # StationMax | TxDefaultProfile | TxProfile
    rate_unit: str  # A | W
    periods: tuple[tuple[int, float], ...]
    start_s: float | None = None  # startSchedule (POSIX s); None = relative (from when it applies)
    duration_s: int | None = None
    valid_to: float | None = None  # POSIX s; None = no end
    transaction_id: str = ""
    accepted_at: float = 0.0

    def limit_at(self, t: float) -> float | None:
        """Limit in force at `t` (None outside the schedule or after valid_to)."""
        if self.valid_to is not None and t >= self.valid_to:
            return None
        start = self.start_s if self.start_s is not None else self.accepted_at
        off = t - start
        if self.duration_s is not None and off >= self.duration_s:
            return None
        cur = self.periods[0][1] if self.periods and off < 0 else None
        for s, lim in self.periods:
            if s <= off:
                cur = lim
        return cur

    def max_limit(self) -> float:
        return max((lim for _s, lim in self.periods), default=0.0)


def sent_profile(version: Version, payload: dict[str, Any], now: float) -> SentProfile | None:
    """Our SetChargingProfile request payload (as sent, validated) -> SentProfile."""
    if version is Version.V16:
        prof, evse, sched = payload.get("csChargingProfiles") or {}, payload.get("connectorId"), None
        sched = prof.get("chargingSchedule") or {}
        pid = prof.get("chargingProfileId")
    else:
        prof, evse = payload.get("chargingProfile") or {}, payload.get("evseId")
        scheds = prof.get("chargingSchedule") or [{}]
        sched = scheds[0]
        pid = prof.get("id")
    if not isinstance(evse, int) or not isinstance(pid, int):
        return None
    periods = tuple(
        (int(p.get("startPeriod", 0)), float(p.get("limit", 0.0))) for p in sched.get("chargingSchedulePeriod", ())
    )
    dur = sched.get("duration")
    return SentProfile(
        evse_id=evse,
        profile_id=pid,
        stack_level=int(prof.get("stackLevel", 0)),
        purpose=_purpose(str(prof.get("chargingProfilePurpose", ""))),
        rate_unit=str(sched.get("chargingRateUnit", "A")),
        periods=periods,
        start_s=_ts(sched.get("startSchedule")),
        duration_s=dur if isinstance(dur, int) else None,
        valid_to=_ts(prof.get("validTo")),
        transaction_id=str(prof.get("transactionId", "")),
        accepted_at=now,
    )


@dataclass
class ProfileBook:
    """The profiles a station accepted from us and should hold now."""

    profiles: dict[str, SentProfile] = field(default_factory=dict)  # slot "evse/purpose/stack" -> profile
    known_ids: set[tuple[int, int]] = field(default_factory=set)  # (evse, id) we ever sent (not foreign)

    @staticmethod
    def slot(p: SentProfile) -> str:
        return f"{p.evse_id}/{p.purpose}/{p.stack_level}"

    def accepted(self, p: SentProfile) -> None:
        """A SetChargingProfile the station accepted: it replaces the profile in its slot and any with its id."""
        for k in [k for k, q in self.profiles.items() if q.profile_id == p.profile_id and q.evse_id == p.evse_id]:
            del self.profiles[k]
        self.profiles[self.slot(p)] = p
        self.known_ids.add((p.evse_id, p.profile_id))
        if len(self.profiles) > MAX_BOOK:
            oldest = min(self.profiles, key=lambda k: self.profiles[k].accepted_at)
            del self.profiles[oldest]
        if len(self.known_ids) > 4 * MAX_BOOK:
            self.known_ids = {(q.evse_id, q.profile_id) for q in self.profiles.values()}

    def cleared(self, version: Version, payload: dict[str, Any]) -> None:
        """An accepted ClearChargingProfile (our request payload): drop what it matches."""
        if version is Version.V16:
            pid, evse = payload.get("id"), payload.get("connectorId")
            purpose, stack = payload.get("chargingProfilePurpose"), payload.get("stackLevel")
        else:
            crit = payload.get("chargingProfileCriteria") or {}
            pid, evse = payload.get("chargingProfileId"), crit.get("evseId")
            purpose, stack = crit.get("chargingProfilePurpose"), crit.get("stackLevel")
        for k, p in list(self.profiles.items()):
            if pid is not None:
                hit = p.profile_id == pid
            else:
                hit = (
                    (evse is None or p.evse_id == evse)
                    and (purpose is None or p.purpose == _purpose(purpose))
                    and (stack is None or p.stack_level == stack)
                )
            if hit:
                del self.profiles[k]

    def transaction_ended(self, transaction_id: str) -> None:
        """TxProfiles die with their transaction (OCPP): no longer expected."""
        for k in [k for k, p in self.profiles.items() if p.transaction_id and p.transaction_id == transaction_id]:
            del self.profiles[k]

    def expected(self, now: float, skew_s: float) -> list[SentProfile]:
        """Profiles that must still be installed at `now`: not ending within the station clock skew."""
        return [p for p in self.profiles.values() if p.valid_to is None or p.valid_to > now + skew_s]

    def slots_used(self) -> set[tuple[str, int]]:
        return {(p.purpose, p.stack_level) for p in self.profiles.values()}

    def dump(self) -> bytes:
        return json.dumps(
            {"profiles": [asdict(p) for p in self.profiles.values()], "known_ids": sorted(self.known_ids)}
        ).encode()

    @classmethod
    def load(cls, blob: bytes | None) -> ProfileBook:
        """From `dump`; anything unreadable gives an empty book (the next writes fill it)."""
        book = cls()
        if not blob:
            return book
        try:
            d = json.loads(blob)
            for raw in d.get("profiles", [])[:MAX_BOOK]:
                raw["periods"] = tuple((int(s), float(v)) for s, v in raw["periods"])
                p = SentProfile(**raw)
                book.profiles[cls.slot(p)] = p
            book.known_ids = {(int(e), int(i)) for e, i in d.get("known_ids", [])[: 4 * MAX_BOOK]}
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()
        return book


@dataclass(frozen=True)
class Mismatch:
    kind: str
    evse_id: int
    stack_level: int = 0
    profile_id: int = 0
    purpose: str = ""
    sent_limit: float = 0.0
    reported_limit: float = 0.0
    rate_unit: str = ""


def _tolerance(limit: float) -> float:
    return 0.1 + 0.01 * abs(limit)


@dataclass(frozen=True)
class Reported:
    evse_id: int
    profile_id: int
    stack_level: int
    purpose: str
    rate_unit: str
    periods: tuple[tuple[int, float], ...]


def reported_profiles(reports: list[dict[str, Any]]) -> list[Reported]:
    """ReportChargingProfiles payloads (validated) -> the CSO profiles they list (other sources — an EMS, the
    grid operator — are external limits, reported with NotifyChargingLimit, not ours to compare)."""
    out: list[Reported] = []
    for rep in reports:
        if rep.get("chargingLimitSource", "CSO") != "CSO":
            continue
        evse = int(rep.get("evseId", 0))
        for prof in rep.get("chargingProfile") or ():
            sched = (prof.get("chargingSchedule") or [{}])[0]
            periods = tuple(
                (int(p.get("startPeriod", 0)), float(p["limit"]))
                for p in sched.get("chargingSchedulePeriod", ())
                if isinstance(p.get("limit"), int | float)
            )
            out.append(
                Reported(
                    evse,
                    int(prof.get("id", -1)),
                    int(prof.get("stackLevel", 0)),
                    _purpose(str(prof.get("chargingProfilePurpose", ""))),
                    str(sched.get("chargingRateUnit", "")),
                    periods,
                )
            )
            if len(out) >= MAX_REPORTED:
                return out
    return out


def compare_profiles(book: ProfileBook, reported: list[Reported], now: float, skew_s: float) -> list[Mismatch]:
    """What the station holds against what it should hold (see the module doc)."""
    out: list[Mismatch] = []
    by_id = {(r.evse_id, r.profile_id): r for r in reported}
    expected = book.expected(now, skew_s)
    for e in expected:
        r = by_id.get((e.evse_id, e.profile_id))
        if r is None:
            out.append(
                Mismatch("missing", e.evse_id, e.stack_level, e.profile_id, e.purpose, e.max_limit(), 0.0, e.rate_unit)
            )
            continue
        if r.rate_unit != e.rate_unit:
            out.append(
                Mismatch(
                    "altered",
                    e.evse_id,
                    e.stack_level,
                    e.profile_id,
                    e.purpose,
                    e.max_limit(),
                    max((v for _s, v in r.periods), default=0.0),
                    r.rate_unit,
                )
            )
            continue
        for start, lim in r.periods:
            ref = next((v for s, v in reversed(e.periods) if s <= start), e.max_limit())
            if lim > ref + _tolerance(ref):
                out.append(
                    Mismatch("higher_limit", e.evse_id, e.stack_level, e.profile_id, e.purpose, ref, lim, e.rate_unit)
                )
                break
    ours = book.slots_used()
    for r in reported:
        if (r.purpose, r.stack_level) in ours and (r.evse_id, r.profile_id) not in book.known_ids:
            out.append(
                Mismatch(
                    "foreign",
                    r.evse_id,
                    r.stack_level,
                    r.profile_id,
                    r.purpose,
                    0.0,
                    max((v for _s, v in r.periods), default=0.0),
                    r.rate_unit,
                )
            )
    return out


def expected_limit(book: ProfileBook, evse_id: int, now: float, skew_s: float) -> tuple[float, str] | None:
    """(limit, unit) our profiles allow at `now` for `evse_id` (0 = the station): within a purpose the highest
    stack level in force wins; the station maximum caps everything, a TxProfile (else TxDefault) the EVSE.
    None when we have no profile in force there (nothing to compare) or units differ."""
    live = [p for p in book.expected(now, skew_s) if p.limit_at(now) is not None]

    def top(purpose: str, evse: int) -> SentProfile | None:
        cand = [p for p in live if p.purpose == purpose and p.evse_id == evse]
        return max(cand, key=lambda p: p.stack_level) if cand else None

    chosen = [top("StationMax", 0)]
    if evse_id:
        chosen.append(top("TxProfile", evse_id) or top("TxDefaultProfile", evse_id) or top("TxDefaultProfile", 0))
    picked = [p for p in chosen if p is not None]
    if not picked or len({p.rate_unit for p in picked}) != 1:
        return None
    limits = [lim for p in picked if (lim := p.limit_at(now)) is not None]
    return min(limits), picked[0].rate_unit


def composite_now(version: Version, payload: dict[str, Any], now: float) -> tuple[float, str] | None:
    """(limit, unit) a GetCompositeSchedule answer (validated) gives for `now`; None when not Accepted."""
    if payload.get("status") != "Accepted":
        return None
    if version is Version.V16:
        sched = payload.get("chargingSchedule") or {}
        start = _ts(payload.get("scheduleStart")) or _ts(sched.get("startSchedule"))
    else:
        sched = payload.get("schedule") or {}
        start = _ts(sched.get("scheduleStart"))
    periods = sorted(
        (int(p.get("startPeriod", 0)), float(p.get("limit", math.inf))) for p in sched.get("chargingSchedulePeriod", ())
    )
    if not periods:
        return None
    off = now - start if start is not None else 0.0
    cur = periods[0][1]
    for s, lim in periods:
        if s <= off:
            cur = lim
    return cur, str(sched.get("chargingRateUnit", ""))


def compare_composite(
    book: ProfileBook, evse_id: int, composite: tuple[float, str] | None, now: float, skew_s: float
) -> Mismatch | None:
    """`composite_higher` when the station's composite limit now is above what our profiles allow."""
    exp = expected_limit(book, evse_id, now, skew_s)
    if exp is None or composite is None or composite[1] != exp[1]:
        return None
    if composite[0] > exp[0] + _tolerance(exp[0]):
        return Mismatch("composite_higher", evse_id, sent_limit=exp[0], reported_limit=composite[0], rate_unit=exp[1])
    return None


@dataclass(frozen=True)
class CheckResult:
    """One check of one station: when, whether every read was answered, what differed."""

    at: float
    complete: bool
    mismatches: tuple[Mismatch, ...] = ()
    reason: str = ""  # why incomplete (timeout, CALLERROR, ...)

    @property
    def ok(self) -> bool:
        return self.complete and not self.mismatches

    def as_json(self) -> dict[str, Any]:
        return {
            "checked_at": datetime.fromtimestamp(self.at, UTC).isoformat(),
            "ok": self.ok,
            "complete": self.complete,
            "reason": self.reason,
            "mismatches": [asdict(m) for m in self.mismatches],
        }


@dataclass
class CheckSchedule:
    """When a station's next check runs: `delay_s` after an accepted write (coalesced), every `audit_s`
    anyway, never more than `per_hour` checks in the last hour (a check is two to three reads on a link
    that also carries the station's own traffic; reads do not write the station's flash)."""

    delay_s: float
    audit_s: float
    per_hour: int
    due: float | None = None  # when the next check runs (None = none planned)
    done: list[float] = field(default_factory=list)

    def after_write(self, now: float) -> None:
        want = now + self.delay_s
        self.due = want if self.due is None else min(self.due, max(want, now))

    def next_due(self, now: float) -> float | None:
        """When the next check may run: the planned one or the audit, pushed back by the hourly budget."""
        self.done = [t for t in self.done if t > now - 3600.0]
        last = max(self.done, default=None)
        cand = [
            t
            for t in (self.due, (last + self.audit_s) if last is not None and self.audit_s > 0 else None)
            if t is not None
        ]
        if not cand:
            return None
        at = min(cand)
        if len(self.done) >= self.per_hour > 0:
            at = max(at, min(self.done) + 3600.0)
        return at

    def ran(self, now: float) -> None:
        self.done.append(now)
        self.due = None
