"""State the core keeps per source (EVSE, station, grid meter) and what it reports per node.

Every state class round-trips through a JSON-able dict (`to_dict` / `from_dict`) so the Kafka
runtime can keep it in changelog-backed faust tables and a restarted worker recovers it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, Self

P3 = tuple[float, float, float]
ZERO3: P3 = (0.0, 0.0, 0.0)


class Outcome(StrEnum):
    """What happened to one reading (label `outcome` of gridcharge_telemetry_readings_total)."""

    OK = "ok"
    IMPLAUSIBLE = "implausible"
    STALE = "stale"  # arrived too late (sampled long before now) or out of order: not applied


def p3(v: Any) -> P3:
    """A 3-tuple of floats from a list (JSON) or tuple."""
    a, b, c = v
    return (float(a), float(b), float(c))


def add3(a: P3, b: P3) -> P3:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def sub3(a: P3, b: P3) -> P3:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def max3(a: P3, b: P3) -> P3:
    return (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]))


class _Serde:
    """dataclass <-> dict with tuples as lists and NaN as None (JSON has no NaN)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():  # type: ignore[call-overload]
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        kw: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in d:
                continue
            v = d[f.name]
            if isinstance(v, list) and len(v) == 3 and all(isinstance(x, int | float) for x in v):
                v = p3(v)
            kw[f.name] = v
        return cls(**kw)


@dataclass
class EvseState(_Serde):
    """Latest trusted measurement of one EVSE, mapped to GRID phases, plus its session."""

    station_id: str
    evse_id: int
    power_w: P3 = ZERO3  # per grid phase, last trusted value
    current_a: P3 = ZERO3  # per grid phase, last trusted value
    measured: bool = False  # a trusted power reading was ever applied
    last_sample_s: float | None = None  # sampled_at of the last applied meter value (POSIX s)
    last_seen_s: float | None = None  # last report of any kind about this EVSE (POSIX s)
    interval_s: float | None = None  # smoothed gap between meter values
    implausible: bool = False  # last reading failed the checks: measured value not trusted
    implausible_reason: str = ""
    energy_register_wh: float | None = None
    status: str = ""
    transaction_id: str = ""
    charging_state: str = ""
    session_start_s: float | None = None
    session_meter_start_wh: float | None = None
    session_energy_wh: float = 0.0
    energy_delivered_wh: float = 0.0  # sum over ended sessions since this state was created
    # accepted limits by purpose ("tx", "tx_default"): [limit_a per phase, accepted_at_s, until_s | None]
    limits: dict[str, list[float | None]] = field(default_factory=dict)
    sample_limit_a: float | None = None  # the limit the EV had been following when the last sample was taken

    @property
    def charging(self) -> bool:
        return bool(self.transaction_id) or self.status in ("Charging", "SuspendedEV", "SuspendedEVSE")


@dataclass
class StationState(_Serde):
    """Liveness of a station, its station-wide limit, temperature and commands awaiting a result."""

    station_id: str
    last_seen_s: float | None = None
    online: bool = True  # False after a Disconnected event until it reports again
    # accepted station-level limits: "station_max" (total of the station; stack level n > 0 as
    # "station_max@n") and "tx_default" (evse 0: per EVSE); each [limit_a per phase, accepted_at_s, until_s | None]
    limits: dict[str, list[float | None]] = field(default_factory=dict)
    temperature_c: float | None = None
    temperature_at_s: float | None = None
    # command_id -> {"evse_id": int, "purpose": str | None, "limit_a": float | None (None = clear), "until_s": ...}
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class MeterState(_Serde):
    """Latest reading of a grid meter attached to a node (per grid phase)."""

    node_id: str
    meter_id: str
    power_w: P3 = ZERO3
    current_a: P3 = ZERO3
    has_current: bool = False
    ambient_c: float | None = None
    last_sample_s: float | None = None
    last_seen_s: float | None = None
    interval_s: float | None = None
    implausible: bool = False
    implausible_reason: str = ""
    trusted: bool = False  # a plausible reading was ever applied
    last_base_w: P3 | None = None  # base load measured when the meter was last fresh (W)


@dataclass
class WeatherState(_Serde):
    """Temperature forecast of the site (weather topic), to read the current ambient from."""

    site_id: str
    start_s: float
    step_s: int
    temperature_c: list[float] = field(default_factory=list)

    def at(self, now_s: float) -> float | None:
        if self.step_s <= 0:
            return None
        i = int((now_s - self.start_s) // self.step_s)
        if 0 <= i < len(self.temperature_c):
            v = self.temperature_c[i]
            return v if v is not None and math.isfinite(v) else None
        return None


@dataclass(frozen=True)
class NodeLoadView:
    """One node's load now (W per grid phase), as published in grid.v1.NodeLoad."""

    node_id: str
    as_of_s: float
    load_w: P3
    worst_case_w: P3
    ev_load_w: P3
    base_load_w: P3
    limit_w: P3
    metered: bool
    meter_fresh: bool
    stale_sources: int
    implausible_sources: int
    ambient_c: float  # NaN when unknown
