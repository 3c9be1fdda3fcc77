"""Where a SetChargingProfile is built: the version-neutral `command_pb2.ChargingProfile` is checked
against the OCPP rules and the station's capabilities, then mapped to 1.6 or 2.0.1 JSON (2.1: the 2.0.1
shape, valid against the 2.1 schema).

Rules (OCPP 1.6 §3.13/§7.7-7.9, 2.0.1 K01): the first period starts at 0 s, periods ascend strictly,
the rate unit is one the station allows, the period count and stack level fit the station, a TxProfile
names a transaction and an EVSE, a station-wide maximum profile targets EVSE 0. Limits are rounded DOWN
to a multiple of 0.1 with Decimal (1.6 requires `multipleOf 0.1`; rounding down never exceeds a grant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.gateway.core.errors import Version
from gridcharge.shared.codec import iso_utc

TENTH = Decimal("0.1")
RATE_UNIT = {common_pb2.RATE_UNIT_A: "A", common_pb2.RATE_UNIT_W: "W"}
PURPOSE = {
    Version.V16: {
        command_pb2.PROFILE_PURPOSE_STATION_MAX: "ChargePointMaxProfile",
        command_pb2.PROFILE_PURPOSE_TX_DEFAULT: "TxDefaultProfile",
        command_pb2.PROFILE_PURPOSE_TX: "TxProfile",
    },
    Version.V201: {
        command_pb2.PROFILE_PURPOSE_STATION_MAX: "ChargingStationMaxProfile",
        command_pb2.PROFILE_PURPOSE_TX_DEFAULT: "TxDefaultProfile",
        command_pb2.PROFILE_PURPOSE_TX: "TxProfile",
    },
}
PURPOSE[Version.V21] = PURPOSE[Version.V201]  # 2.1 adds purposes (PriorityCharging, LocalGeneration) we do not send
KINDS = ("Absolute", "Relative")  # Recurring needs a recurrencyKind, which the contract does not carry


@dataclass(frozen=True)
class Capabilities:
    """What a station accepts; None = unknown (only the spec rules apply)."""

    max_stack_level: int | None = None
    allowed_rate_units: frozenset[str] = field(default_factory=frozenset)  # empty = unknown
    max_periods: int | None = None
    max_profiles_installed: int | None = None


class InvalidProfile(ValueError):
    """The profile breaks a spec rule or the station's capabilities; never sent."""


def round_limit(limit: float) -> float:
    """The one rounding of a profile's limit: DOWN to a multiple of 0.1, at the edge that writes the OCPP
    message (exact decimal arithmetic). A float a hair below a tenth by binary representation (16.1 A × 230 V
    × 3 = 11108.999999999998 W) counts as that tenth: 1e-9 relative is representation, not a limit."""
    return float(Decimal(repr(limit + abs(limit) * 1e-9)).quantize(TENTH, rounding=ROUND_DOWN))


def _iso(ts: Timestamp) -> str:
    return iso_utc(ts.ToDatetime(), timespec="seconds")


def check_profile(evse_id: int, p: command_pb2.ChargingProfile, caps: Capabilities, version: Version) -> None:
    """Raise InvalidProfile naming the first broken rule."""
    if p.purpose not in PURPOSE[version]:
        raise InvalidProfile("purpose not set")
    if evse_id < 0:
        raise InvalidProfile("evse_id must be >= 0")
    if p.purpose == command_pb2.PROFILE_PURPOSE_STATION_MAX and evse_id != 0:
        raise InvalidProfile("a station-wide maximum profile must target EVSE 0")
    if p.purpose == command_pb2.PROFILE_PURPOSE_TX:
        if not p.transaction_id:
            raise InvalidProfile("TxProfile requires a transaction id")
        if evse_id == 0:
            raise InvalidProfile("TxProfile must target an EVSE > 0")
        if version is Version.V16 and not (p.transaction_id.isdigit() and len(p.transaction_id) < 10):
            raise InvalidProfile("1.6 transaction id must be an integer")
    elif p.transaction_id:
        raise InvalidProfile("transaction id only allowed on a TxProfile")
    if p.kind and p.kind not in KINDS:
        raise InvalidProfile(f"kind must be one of {KINDS}")
    if p.stack_level < 0:
        raise InvalidProfile("stack level must be >= 0")
    if caps.max_stack_level is not None and p.stack_level > caps.max_stack_level:
        raise InvalidProfile(f"stack level {p.stack_level} above station maximum {caps.max_stack_level}")
    unit = RATE_UNIT.get(p.rate_unit)
    if unit is None:
        raise InvalidProfile("rate unit not set")
    if caps.allowed_rate_units and unit not in caps.allowed_rate_units:
        raise InvalidProfile(f"rate unit {unit} not allowed by station ({','.join(sorted(caps.allowed_rate_units))})")
    if not p.periods:
        raise InvalidProfile("schedule has no periods")
    if caps.max_periods is not None and len(p.periods) > caps.max_periods:
        raise InvalidProfile(f"{len(p.periods)} periods above station maximum {caps.max_periods}")
    if p.periods[0].start_period_s != 0:
        raise InvalidProfile("first period must start at 0 s")
    for prev, cur in zip(p.periods, p.periods[1:], strict=False):
        if cur.start_period_s <= prev.start_period_s:
            raise InvalidProfile("period start times must ascend strictly")
    for per in p.periods:
        if not math.isfinite(per.limit) or per.limit < 0:
            raise InvalidProfile("limits must be finite and >= 0")
        if per.number_phases not in (0, 1, 2, 3):
            raise InvalidProfile("number_phases must be 1..3 (0 = not given)")
    if p.duration_s < 0 or p.profile_id < 0:
        raise InvalidProfile("duration and profile id must be >= 0")
    if p.min_charging_rate < 0 or not math.isfinite(p.min_charging_rate):
        raise InvalidProfile("min charging rate must be finite and >= 0")
    if (
        p.HasField("valid_from")
        and p.HasField("valid_to")
        and p.valid_to.ToNanoseconds() <= p.valid_from.ToNanoseconds()
    ):
        raise InvalidProfile("valid_to must be after valid_from")


def _schedule(p: command_pb2.ChargingProfile) -> dict[str, Any]:
    sched: dict[str, Any] = {"chargingRateUnit": RATE_UNIT[p.rate_unit]}
    if p.duration_s:
        sched["duration"] = p.duration_s
    if p.HasField("start_schedule"):
        sched["startSchedule"] = _iso(p.start_schedule)
    if p.min_charging_rate:
        sched["minChargingRate"] = round_limit(p.min_charging_rate)
    periods = []
    for per in p.periods:
        out: dict[str, Any] = {"startPeriod": per.start_period_s, "limit": round_limit(per.limit)}
        if per.number_phases:
            out["numberPhases"] = per.number_phases
        periods.append(out)
    sched["chargingSchedulePeriod"] = periods
    return sched


def set_charging_profile_payload(
    cmd: command_pb2.SetChargingProfile, caps: Capabilities, version: Version
) -> dict[str, Any]:
    """Validated SetChargingProfile request payload for `version` (raises InvalidProfile)."""
    p = cmd.profile
    check_profile(cmd.evse_id, p, caps, version)
    prof: dict[str, Any] = {
        "stackLevel": p.stack_level,
        "chargingProfilePurpose": PURPOSE[version][p.purpose],
        "chargingProfileKind": p.kind or "Absolute",
    }
    if p.HasField("valid_from"):
        prof["validFrom"] = _iso(p.valid_from)
    if p.HasField("valid_to"):
        prof["validTo"] = _iso(p.valid_to)
    if version is Version.V16:
        prof = {"chargingProfileId": p.profile_id, **prof, "chargingSchedule": _schedule(p)}
        if p.transaction_id:
            prof["transactionId"] = int(p.transaction_id)
        return {"connectorId": cmd.evse_id, "csChargingProfiles": prof}
    sched = {"id": p.profile_id, **_schedule(p)}
    prof = {"id": p.profile_id, **prof, "chargingSchedule": [sched]}
    if p.transaction_id:
        prof["transactionId"] = p.transaction_id[:36]
    return {"evseId": cmd.evse_id, "chargingProfile": prof}
