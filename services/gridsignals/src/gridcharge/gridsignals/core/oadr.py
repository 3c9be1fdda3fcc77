"""OpenADR 3.0 / 3.1 event objects (decoded JSON) → capacity-limit intervals. Pure: no I/O, no clock.

The VTN is a remote party: everything here treats its JSON as untrusted (bounded counts and lengths, finite
non-negative numbers, known units) and raises :class:`EventError` with a short reason instead of crashing.
Times are POSIX seconds (UTC); powers W per phase (L1, L2, L3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

P3 = tuple[float, float, float]

IMPORT_CAPACITY_LIMIT = "IMPORT_CAPACITY_LIMIT"
PRICE = "PRICE"
EXPORT_PRICE = "EXPORT_PRICE"  # what the site is paid for energy it feeds in: gridcharge does not discharge cars
PRICE_TYPES = frozenset({PRICE, EXPORT_PRICE})
MAX_INTERVALS = 2000  # per event: 15-min intervals over 20 days
MAX_TARGETS = 100
MAX_ID_LEN = 128  # OpenADR identifiers are 1..128 characters
MAX_LIMIT_W = 1e9  # 1 GW per phase: anything above is a unit error, not a limit
MAX_PRICE_PER_KWH = 1000.0  # |price| per kWh above this is a unit error (the highest market caps are ~10/kWh)
INFINITE_S = math.inf
_UNIT_W = {"W": 1.0, "KW": 1e3, "MW": 1e6}
_KWH_PER_UNIT = {"WH": 1e-3, "KWH": 1.0, "MWH": 1e3}  # a PRICE is currency per payloadDescriptor unit
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DURATION = re.compile(
    r"^P(?:(?P<y>\d+(?:\.\d+)?)Y)?(?:(?P<mo>\d+(?:\.\d+)?)M)?(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<mi>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


class EventError(ValueError):
    """An event the VEN cannot use (malformed, hostile or in units it does not know); the message says why."""


@dataclass(frozen=True)
class IntervalLimit:
    """One interval of an event: ``limit_w`` per phase (W) from ``start`` to ``end`` (POSIX s, end may be inf)."""

    start: float
    end: float
    limit_w: P3


@dataclass(frozen=True)
class IntervalPrice:
    """One PRICE interval of an event: ``price_per_kwh`` (currency per kWh drawn) from ``start`` to ``end``
    (POSIX s; ``end`` may be inf)."""

    start: float
    end: float
    price_per_kwh: float


@dataclass(frozen=True)
class ParsedEvent:
    """What the VEN uses of one OpenADR event.

    ``limits``: its IMPORT_CAPACITY_LIMIT intervals in time order (empty when it carries none);
    ``report_types``: payload types the VTN asks to be reported (reportDescriptors, e.g. USAGE, DEMAND);
    ``has_price``: it carries PRICE or EXPORT_PRICE payloads;
    ``prices``: its PRICE intervals in time order, per kWh (EXPORT_PRICE is not used: gridcharge does not feed
    energy back); ``currency``: the PRICE payloadDescriptor's ISO 4217 code ("" when the VTN gives none).
    """

    event_id: str
    program_id: str
    name: str
    targets: tuple[str, ...]
    limits: tuple[IntervalLimit, ...]
    report_types: tuple[str, ...]
    has_price: bool
    prices: tuple[IntervalPrice, ...] = ()
    currency: str = ""


def parse_duration_s(text: Any) -> float:
    """ISO 8601 duration (``PT15M``, ``P1D``) → seconds; ``P9999Y`` (OpenADR's "until further notice") → inf.

    Years count 365 days and months 30 (OpenADR uses them only for open-ended periods)."""
    if not isinstance(text, str) or len(text) > 64:
        raise EventError("duration is not an ISO 8601 string")
    m = _DURATION.match(text.strip().upper())
    if m is None or text.strip().upper() in ("P", "PT"):
        raise EventError(f"bad duration {text[:32]!r}")
    parts = {k: float(v) for k, v in m.groupdict().items() if v is not None}
    if parts.get("y", 0.0) >= 9999:
        return INFINITE_S
    seconds = (
        parts.get("y", 0.0) * 365 * 86400
        + parts.get("mo", 0.0) * 30 * 86400
        + parts.get("w", 0.0) * 7 * 86400
        + parts.get("d", 0.0) * 86400
        + parts.get("h", 0.0) * 3600
        + parts.get("mi", 0.0) * 60
        + parts.get("s", 0.0)
    )
    return seconds if seconds < 1e11 else INFINITE_S


def parse_time_s(text: Any) -> float:
    """ISO 8601 date-time with a zone (``2026-12-05T14:00:00Z``) → POSIX s. A time without a zone is refused:
    the VTN and the VEN would read it in different zones."""
    if not isinstance(text, str) or len(text) > 64:
        raise EventError("start is not an ISO 8601 string")
    try:
        dt = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise EventError(f"bad date-time {text[:40]!r}") from None
    if dt.tzinfo is None:
        raise EventError(f"date-time without a zone {text[:40]!r}")
    return dt.timestamp()


def _ident(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LEN:
        raise EventError(f"{what} missing or longer than {MAX_ID_LEN} characters")
    return value


def _targets(raw: Any) -> tuple[str, ...]:
    """3.1 targets are strings; 3.0 targets are ``{"type": ..., "values": [...]}`` objects (their values count)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_TARGETS:
        raise EventError("targets is not a list or too long")
    out: list[str] = []
    for t in raw:
        if isinstance(t, str):
            out.append(t[:MAX_ID_LEN])
        elif isinstance(t, Mapping) and isinstance(t.get("values"), list):
            out.extend(str(v)[:MAX_ID_LEN] for v in t["values"][:MAX_TARGETS] if isinstance(v, str | int))
    return tuple(out[:MAX_TARGETS])


def _period(raw: Any, default_start: float | None, default_duration: float | None) -> tuple[float, float | None]:
    """(start s, duration s or None) of an intervalPeriod, with the event's period as defaults."""
    if raw is None:
        if default_start is None:
            raise EventError("interval without a start (no intervalPeriod on the interval or the event)")
        return default_start, default_duration
    if not isinstance(raw, Mapping):
        raise EventError("intervalPeriod is not an object")
    start = parse_time_s(raw["start"]) if "start" in raw else default_start
    if start is None:
        raise EventError("intervalPeriod without a start")
    duration = parse_duration_s(raw["duration"]) if raw.get("duration") is not None else default_duration
    return start, duration


def _units_w(event: Mapping[str, Any], payload_type: str) -> float:
    """W per unit of ``payload_type`` values from the event's payloadDescriptors (KW when not given)."""
    descriptors = event.get("payloadDescriptors") or []
    if not isinstance(descriptors, list):
        raise EventError("payloadDescriptors is not a list")
    for d in descriptors[:50]:
        if isinstance(d, Mapping) and d.get("payloadType") == payload_type and d.get("units") is not None:
            unit = str(d["units"]).upper()
            if unit not in _UNIT_W:
                raise EventError(f"{payload_type} in unknown units {unit[:16]!r} (W, KW or MW)")
            return _UNIT_W[unit]
    return _UNIT_W["KW"]


def _price_unit(event: Mapping[str, Any]) -> tuple[float, str]:
    """(kWh per unit, currency) of PRICE values from the event's payloadDescriptors: KWH and no currency when
    not given. Units other than WH/KWH/MWH (a price per kW of demand, say) are refused, not guessed."""
    descriptors = event.get("payloadDescriptors") or []
    if not isinstance(descriptors, list):
        raise EventError("payloadDescriptors is not a list")
    for d in descriptors[:50]:
        if isinstance(d, Mapping) and d.get("payloadType") == PRICE:
            unit = str(d.get("units") or "KWH").upper()
            if unit not in _KWH_PER_UNIT:
                raise EventError(f"PRICE per unknown unit {unit[:16]!r} (WH, KWH or MWH)")
            raw_currency = d.get("currency")
            currency = str(raw_currency).strip().upper() if raw_currency is not None else ""
            if currency and not _CURRENCY.match(currency):
                raise EventError(f"PRICE currency {currency[:16]!r} is not an ISO 4217 code")
            return _KWH_PER_UNIT[unit], currency
    return 1.0, ""


def price_per_kwh(values: Sequence[Any], kwh_per_unit: float) -> float:
    """A PRICE payload's one value (currency per unit) → currency per kWh; negative prices are real (surplus)."""
    if len(values) != 1:
        raise EventError(f"price needs exactly 1 value, got {len(values)}")
    v = values[0]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise EventError("price value is not a finite number")
    price = float(v) / kwh_per_unit
    if abs(price) > MAX_PRICE_PER_KWH:
        raise EventError(f"price above {MAX_PRICE_PER_KWH:g} per kWh (unit error?)")
    return price


def _ends(raw: list[tuple[float, float | None, Any]]) -> list[tuple[float, float, Any]]:
    """Sorted (start, duration or None, value) → (start, end, value); an interval without a duration lasts until
    the next one starts (the last: open-ended); empty intervals are dropped."""
    raw = sorted(raw, key=lambda r: r[0])
    out: list[tuple[float, float, Any]] = []
    for i, (start, duration, value) in enumerate(raw):
        if duration is not None:
            end = start + duration
        else:
            end = raw[i + 1][0] if i + 1 < len(raw) else INFINITE_S
        if end > start:
            out.append((start, end, value))
    return out


def per_phase_w(values: Sequence[Any], unit_w: float) -> P3:
    """One value = the total of the three phases (split evenly); three values = L1, L2, L3."""
    if len(values) not in (1, 3):
        raise EventError(f"capacity limit needs 1 (total) or 3 (per phase) values, got {len(values)}")
    nums: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)) or v < 0:
            raise EventError("capacity limit value is not a finite number ≥ 0")
        nums.append(float(v) * unit_w)
    if len(nums) == 1:
        nums = [nums[0] / 3.0] * 3
    if max(nums) > MAX_LIMIT_W:
        raise EventError("capacity limit above 1 GW per phase (unit error?)")
    return (nums[0], nums[1], nums[2])


def parse_event(event: Mapping[str, Any]) -> ParsedEvent:
    """An OpenADR event object → its capacity-limit intervals, targets and report requests.

    Intervals without an ``intervalPeriod`` follow each other from the event's ``intervalPeriod`` (each lasts
    the event's duration); an interval whose duration is unknown lasts until the next one starts (the last:
    open-ended)."""
    if not isinstance(event, Mapping):
        raise EventError("event is not an object")
    event_id = _ident(event.get("id"), "event id")
    program_id = _ident(event.get("programID"), "programID")
    raw_name = event.get("eventName")
    name = raw_name if isinstance(raw_name, str) else ""
    ev_start: float | None = None
    ev_duration: float | None = None
    if event.get("intervalPeriod") is not None:
        ev_start, ev_duration = _period(event["intervalPeriod"], None, None)
    intervals = event.get("intervals") or []
    if not isinstance(intervals, list) or len(intervals) > MAX_INTERVALS:
        raise EventError(f"intervals is not a list of at most {MAX_INTERVALS}")
    unit_w = _units_w(event, IMPORT_CAPACITY_LIMIT)
    has_price = False
    raw_limits: list[tuple[float, float | None, P3]] = []
    raw_prices: list[tuple[float, float | None, float]] = []
    price_unit: tuple[float, str] | None = None
    next_start = ev_start
    for interval in intervals:
        if not isinstance(interval, Mapping):
            raise EventError("interval is not an object")
        start, duration = _period(interval.get("intervalPeriod"), next_start, ev_duration)
        next_start = start + duration if duration is not None and math.isfinite(duration) else None
        payloads = interval.get("payloads") or []
        if not isinstance(payloads, list) or len(payloads) > 50:
            raise EventError("payloads is not a list of at most 50")
        for p in payloads:
            if not isinstance(p, Mapping):
                raise EventError("payload is not an object")
            kind = p.get("type")
            if kind == IMPORT_CAPACITY_LIMIT:
                values = p.get("values")
                if not isinstance(values, list):
                    raise EventError("payload values is not a list")
                raw_limits.append((start, duration, per_phase_w(values, unit_w)))
            elif kind == PRICE:
                has_price = True
                values = p.get("values")
                if not isinstance(values, list):
                    raise EventError("payload values is not a list")
                if price_unit is None:
                    price_unit = _price_unit(event)
                raw_prices.append((start, duration, price_per_kwh(values, price_unit[0])))
            elif kind in PRICE_TYPES:
                has_price = True
    limits = [IntervalLimit(start, end, w) for start, end, w in _ends(raw_limits)]
    prices = [IntervalPrice(start, end, price) for start, end, price in _ends(raw_prices)]
    return ParsedEvent(
        event_id,
        program_id,
        name[:MAX_ID_LEN],
        _targets(event.get("targets")),
        tuple(limits),
        _report_types(event.get("reportDescriptors")),
        has_price,
        tuple(prices),
        price_unit[1] if price_unit is not None else "",
    )


def _report_types(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(
        dict.fromkeys(
            str(d["payloadType"])[:64]
            for d in raw[:20]
            if isinstance(d, Mapping) and isinstance(d.get("payloadType"), str)
        )
    )
