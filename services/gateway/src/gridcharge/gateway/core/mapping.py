"""OCPP payloads (validated, camelCase as on the wire) → domain messages (protobuf) for the bus.

Pure functions: the caller passes the receive time and identity. Units: power W, energy Wh, current A,
voltage V, temperature °C (as reported), SoC %. kW/kWh/kvar... are scaled to their base unit and 2.0.1
`unitOfMeasure.multiplier` (a power of ten) is applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from gridcharge.common.v1 import common_pb2
from gridcharge.gateway.core.errors import Version, safe
from gridcharge.shared.codec import ENERGY, UNIT_SCALE, meta, to_timestamp
from gridcharge.station.v1 import station_pb2

MAX_TEXT = 255  # station strings put on the bus are capped (they were schema-checked already)
MAX_JSON = 16_384  # JSON blobs (profiles, schedules, DataTransfer data) on the bus

# 1.6 default units per measurand when the station omits `unit`
_DEFAULT_UNIT = {
    "Current.Import": "A",
    "Current.Export": "A",
    "Current.Offered": "A",
    "Voltage": "V",
    "Power.Active.Import": "W",
    "Power.Active.Export": "W",
    "Power.Offered": "W",
    "Temperature": "Celsius",
    "SoC": "Percent",
    "Frequency": "Hz",
    "Power.Factor": "",
}

OCPP_VERSION = {
    Version.V16: common_pb2.OCPP_VERSION_16,
    Version.V201: common_pb2.OCPP_VERSION_201,
    Version.V21: common_pb2.OCPP_VERSION_21,
}


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A station string for the bus: str only, length-capped (content is data, kept verbatim)."""
    return value[:limit] if isinstance(value, str) else ""


def blob(value: Any) -> str:
    """JSON of a station structure for the bus, capped at MAX_JSON characters (then empty)."""
    out = json.dumps(value, separators=(",", ":"), ensure_ascii=True, default=str)
    return out if len(out) <= MAX_JSON else ""


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 from a station ('Z' allowed), in UTC; None when absent, unreadable, without a zone, or
    outside what a UTC timestamp can hold (0001-01-01T00:00:00+14:00 is in year 0 in UTC; the schema
    check answers those with PropertyConstraintViolation before a handler runs, this is the backstop)."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        dt = datetime.fromisoformat(value)
        return dt.astimezone(UTC) if dt.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None


def new_event(station_id: str, version: Version, producer: str, occurred_at: datetime) -> station_pb2.StationEvent:
    return station_pb2.StationEvent(
        meta=meta(producer, occurred_at),
        station_id=station_id,
        ocpp_version=OCPP_VERSION[version],
        occurred_at=to_timestamp(occurred_at),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        v = float(value)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            v = float(value)
        except ValueError:
            return None
    else:
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def sampled_value(sv: dict[str, Any], version: Version) -> station_pb2.SampledValue | None:
    """One sampled value, scaled to base units; None for signed/unreadable values."""
    if version is Version.V16:
        if sv.get("format") == "SignedData":
            return None
        measurand = sv.get("measurand", ENERGY)
        unit = sv.get("unit") or _DEFAULT_UNIT.get(measurand, "Wh")
        value = _number(sv.get("value"))
        multiplier = 0
    else:
        measurand = sv.get("measurand", ENERGY)
        uom = sv.get("unitOfMeasure") or {}
        unit = uom.get("unit") or _DEFAULT_UNIT.get(measurand, "Wh")
        multiplier = uom.get("multiplier", 0) if isinstance(uom.get("multiplier", 0), int) else 0
        value = _number(sv.get("value"))
    if value is None:
        return None
    if multiplier:
        value *= 10.0 ** max(-9, min(9, multiplier))
    if unit in UNIT_SCALE:
        unit, factor = UNIT_SCALE[unit]
        value *= factor
    return station_pb2.SampledValue(
        measurand=text(measurand, 64),
        phase=text(sv.get("phase", ""), 8),
        value=value,
        unit=text(unit, 16),
        context=text(sv.get("context", ""), 32),
        location=text(sv.get("location", ""), 16),
    )


def meter_values(
    station_id: str,
    version: Version,
    producer: str,
    now: datetime,
    evse_id: int,
    transaction_id: str,
    meter_value: Iterable[dict[str, Any]],
) -> Iterator[station_pb2.MeterValues]:
    """One MeterValues message per sampled timestamp (all measurands and phases kept)."""
    for mv in meter_value:
        values = [v for v in (sampled_value(sv, version) for sv in mv.get("sampledValue", ())) if v is not None]
        if not values:
            continue
        yield station_pb2.MeterValues(
            meta=meta(producer, now),
            station_id=station_id,
            evse_id=evse_id,
            transaction_id=transaction_id,
            values=values,
            sampled_at=to_timestamp(parse_time(mv.get("timestamp")) or now),
        )


# --- station → event payloads (one function per action; both versions where they share a shape) ---


def boot_16(p: dict[str, Any], status: str) -> station_pb2.Boot:
    return station_pb2.Boot(
        vendor=text(p.get("chargePointVendor")),
        model=text(p.get("chargePointModel")),
        firmware_version=text(p.get("firmwareVersion")),
        serial_number=text(p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber")),
        reason="",
        registration_status=status,
    )


def boot_201(p: dict[str, Any], status: str) -> station_pb2.Boot:
    cs = p.get("chargingStation", {})
    return station_pb2.Boot(
        vendor=text(cs.get("vendorName")),
        model=text(cs.get("model")),
        firmware_version=text(cs.get("firmwareVersion")),
        serial_number=text(cs.get("serialNumber")),
        reason=text(p.get("reason")),
        registration_status=status,
    )


def status_16(p: dict[str, Any]) -> station_pb2.Status:
    cid = int(p.get("connectorId", 0))
    return station_pb2.Status(
        evse_id=cid, connector_id=1 if cid else 0, status=text(p.get("status")), error_code=text(p.get("errorCode"))
    )


def status_201(p: dict[str, Any]) -> station_pb2.Status:
    return station_pb2.Status(
        evse_id=int(p.get("evseId", 0)),
        connector_id=int(p.get("connectorId", 0)),
        status=text(p.get("connectorStatus")),
    )


def charging_needs(p: dict[str, Any]) -> station_pb2.ChargingNeeds:
    """NotifyEVChargingNeeds → session demand (departure, energy Wh, EV current limits A)."""
    needs = p.get("chargingNeeds", {})
    ac = needs.get("acChargingParameters") or {}
    dc = needs.get("dcChargingParameters") or {}
    transfer = text(needs.get("requestedEnergyTransfer"), 32)
    msg = station_pb2.ChargingNeeds(
        evse_id=int(p.get("evseId", 0)),
        energy_amount_wh=float(ac.get("energyAmount", dc.get("energyAmount", 0)) or 0),
        ev_min_current_a=float(ac.get("evMinCurrent", 0) or 0),
        ev_max_current_a=float(ac.get("evMaxCurrent", dc.get("evMaxCurrent", 0)) or 0),
        ev_max_voltage_v=float(ac.get("evMaxVoltage", dc.get("evMaxVoltage", 0)) or 0),
        requested_energy_transfer=transfer,
        phases={"AC_single_phase": 1, "AC_two_phase": 2, "AC_three_phase": 3}.get(transfer, 0),
    )
    departure = parse_time(needs.get("departureTime"))
    if departure is not None:
        msg.departure_time.CopyFrom(to_timestamp(departure))
    return msg


def charging_limit(p: dict[str, Any]) -> station_pb2.ChargingLimit:
    lim = p.get("chargingLimit", {})
    return station_pb2.ChargingLimit(
        source=text(lim.get("chargingLimitSource"), 16),
        is_grid_critical=bool(lim.get("isGridCritical", False)),
        evse_id=int(p.get("evseId", 0)),
        profile_json=blob(p.get("chargingSchedule", [])),
    )


def profiles_report(p: dict[str, Any]) -> station_pb2.ChargingProfilesReport:
    return station_pb2.ChargingProfilesReport(
        request_id=int(p.get("requestId", 0)),
        evse_id=int(p.get("evseId", 0)),
        source=text(p.get("chargingLimitSource"), 16),
        profiles_json=blob(p.get("chargingProfile", [])),
        tbc=bool(p.get("tbc", False)),
    )


def ev_schedule(p: dict[str, Any]) -> station_pb2.EvChargingSchedule:
    return station_pb2.EvChargingSchedule(
        evse_id=int(p.get("evseId", 0)), schedule_json=blob(p.get("chargingSchedule", {}))
    )


def data_transfer(p: dict[str, Any]) -> station_pb2.DataTransfer:
    data = p.get("data")
    return station_pb2.DataTransfer(
        vendor_id=text(p.get("vendorId")),
        message_id=text(p.get("messageId")),
        data=text(data, MAX_JSON) if isinstance(data, str) else ("" if data is None else blob(data)),
    )


def notification(action: str, p: dict[str, Any]) -> station_pb2.Notification:
    """A station message without a domain mapping, kept for operators (action + payload JSON)."""
    return station_pb2.Notification(action=text(action, 64), payload_json=blob(p))


def describe(station_id: str) -> str:
    """The station id as it may appear in logs."""
    return safe(station_id, 48)
