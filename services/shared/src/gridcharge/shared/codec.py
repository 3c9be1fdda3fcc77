"""Contract values ⇄ Python values, the same way in every service.

- time: `to_timestamp` (aware datetime or POSIX s → protobuf Timestamp) and back: `timestamp_s` (POSIX s),
  `timestamp_ns` (exact, for pandas), `timestamp_dt` (aware datetime); `iso_utc` is the text form stations
  and operators read;
- `meta`: the envelope every message carries;
- per-phase values: `phase_values` ((L1, L2, L3) → PhaseValues) and `phase_tuple` (back);
- meter values: `parse_meter_values`, the one parser of a station's MeterValues sample → `MeterSample`.

Units: W, A, V, Wh, °C; times in UTC. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, SupportsFloat

from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.common.v1 import common_pb2
from gridcharge.station.v1 import station_pb2

P3 = tuple[float, float, float]


class PhaseSequence(Protocol):
    """Three values by phase L1, L2, L3: a tuple, a list or a numpy array."""

    def __getitem__(self, index: int, /) -> SupportsFloat: ...


# ---------------------------------------------------------------------------------------------- time


def to_timestamp(when: datetime | float) -> Timestamp:
    """An aware datetime (a pandas Timestamp keeps its nanoseconds) or POSIX seconds as a Timestamp."""
    out = Timestamp()
    if isinstance(when, datetime):
        ns = getattr(when, "value", None)  # pandas.Timestamp: nanoseconds since the epoch, exact
        if isinstance(ns, int):
            out.FromNanoseconds(ns)
        else:
            out.FromDatetime(when)
    else:
        out.FromNanoseconds(round(when * 1e9))
    return out


def timestamp_s(t: Timestamp) -> float | None:
    """POSIX seconds of a Timestamp; None when it is unset."""
    if t.seconds == 0 and t.nanos == 0:
        return None
    return t.seconds + t.nanos / 1e9


def timestamp_ns(t: Timestamp) -> int | None:
    """Nanoseconds since the epoch (exact, e.g. for ``pd.Timestamp(ns, unit="ns")``); None when unset."""
    if t.seconds == 0 and t.nanos == 0:
        return None
    return int(t.ToNanoseconds())


def timestamp_dt(t: Timestamp) -> datetime | None:
    """An aware UTC datetime (µs); None when unset, not after 1970 (a station clock never set) or beyond
    what a datetime holds."""
    if t.seconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(t.seconds + t.nanos / 1e9, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def iso_utc(when: datetime | float, timespec: str = "milliseconds") -> str:
    """ISO 8601 in UTC with a ``Z``, e.g. ``2026-06-01T12:00:00.000Z`` (digits below ``timespec`` are cut,
    not rounded). A naive datetime is taken as UTC; a float is POSIX seconds."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, UTC)
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.isoformat(timespec=timespec) + "Z"


def meta(producer: str, now: datetime | float, trace_id: str = "") -> common_pb2.Meta:
    """The envelope of a message ``producer`` (``service/replica``) made at ``now``."""
    return common_pb2.Meta(producer=producer, produced_at=to_timestamp(now), trace_id=trace_id)


# ---------------------------------------------------------------------------------------------- phases


def phase_values(values: PhaseSequence) -> common_pb2.PhaseValues:
    """(L1, L2, L3) → PhaseValues (numpy scalars become floats)."""
    return common_pb2.PhaseValues(l1=float(values[0]), l2=float(values[1]), l3=float(values[2]))


def phase_tuple(p: common_pb2.PhaseValues) -> P3:
    """PhaseValues → (L1, L2, L3)."""
    return (p.l1, p.l2, p.l3)


# ---------------------------------------------------------------------------------------------- meter values

ENERGY = "Energy.Active.Import.Register"  # also what a sampled value without a measurand is (OCPP)
POWER = "Power.Active.Import"
CURRENT = "Current.Import"
VOLTAGE = "Voltage"
TEMPERATURE = "Temperature"
OUTLET = ("", "Outlet")  # where the EVSE's electrical values count (OCPP default: Outlet)
# multiples of a base unit (value × factor in the base unit); the gateway scales with this table, and a
# sample that still carries one is scaled here
UNIT_SCALE: dict[str, tuple[str, float]] = {
    "kW": ("W", 1e3),
    "kWh": ("Wh", 1e3),
    "kvar": ("var", 1e3),
    "kvarh": ("varh", 1e3),
    "kVA": ("VA", 1e3),
    "kVAh": ("VAh", 1e3),
}


def _phase_index(phase: str) -> int | None:
    """'L2' / 'L2-N' -> 1; '' -> -1 (no phase); N, L1-L2 (line-to-line) -> None (not used)."""
    if phase == "":
        return -1
    if phase in ("L1", "L2", "L3", "L1-N", "L2-N", "L3-N"):
        return int(phase[1]) - 1
    return None


@dataclass
class MeterSample:
    """One MeterValues message by station-local phase (index 0..2, as the station reports them), in base
    units; None = not reported."""

    power_ph: list[float | None] = field(default_factory=lambda: [None, None, None])
    current_ph: list[float | None] = field(default_factory=lambda: [None, None, None])
    voltage_ph: list[float | None] = field(default_factory=lambda: [None, None, None])
    power_total: float | None = None
    current_any: float | None = None  # Current.Import without phase: the current on each used phase
    energy_wh: float | None = None
    temperature_c: float | None = None
    invalid: str = ""  # non-empty: a value was NaN/inf (the finite ones are still here)

    @property
    def has_power_info(self) -> bool:
        return (
            any(v is not None for v in self.power_ph)
            or any(v is not None for v in self.current_ph)
            or self.power_total is not None
            or self.current_any is not None
        )

    @property
    def max_current_a(self) -> float | None:
        """The highest current reported on any phase (A), None when none is."""
        currents = [c for c in (*self.current_ph, self.current_any) if c is not None]
        return max(currents) if currents else None

    @property
    def phases_drawn(self) -> int | None:
        """On how many phases the car draws, from per-phase currents: None when the sample does not tell
        (fewer than two phases reported, or too little current to judge)."""
        currents = [c for c in self.current_ph if c is not None]
        if len(currents) < 2 or max(currents) < 4.0:
            return None
        return sum(1 for c in currents if c >= max(1.0, 0.25 * max(currents)))

    @property
    def power_w(self) -> float | None:
        """Total power (W): the total when reported, else the sum of the phases reported; None when neither."""
        if self.power_total is not None:
            return self.power_total
        phases = [p for p in self.power_ph if p is not None]
        return sum(phases) if phases else None


def parse_meter_values(values: Iterable[station_pb2.SampledValue]) -> MeterSample:
    """The one parser of a station's sampled values: OCPP defaults (no measurand = the energy register),
    multiples scaled to base units, phases by index, electrical values only where the EVSE delivers
    (`OUTLET`); the EV's own temperature is not ambient. NaN/inf anywhere marks the sample `invalid`."""
    s = MeterSample()
    for sv in values:
        v = sv.value
        measurand = sv.measurand or ENERGY
        if not math.isfinite(v):
            s.invalid = f"non-finite {measurand}"
            continue
        v *= UNIT_SCALE.get(sv.unit, ("", 1.0))[1]
        if measurand == TEMPERATURE:
            if sv.location != "EV":
                s.temperature_c = v
            continue
        idx = _phase_index(sv.phase)
        if idx is None or sv.location not in OUTLET:
            continue
        if measurand == ENERGY:
            if idx == -1:
                s.energy_wh = v
        elif measurand == POWER:
            if idx == -1:
                s.power_total = v
            else:
                s.power_ph[idx] = v
        elif measurand == CURRENT:
            if idx == -1:
                s.current_any = v
            else:
                s.current_ph[idx] = v
        elif measurand == VOLTAGE and idx >= 0:
            s.voltage_ph[idx] = v
    return s
