"""Builders for telemetry tests (unit and integration): a small topology and protobuf messages."""

from __future__ import annotations

from typing import Any

from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import phase_values, to_timestamp
from gridcharge.shared.topology import Topology, parse_topology
from gridcharge.station.v1 import station_pb2

T0 = 1_780_000_200.0  # a POSIX time on a 15-min boundary


def topology() -> Topology:
    """trafo (metered, 100 A/phase) -> panel (unmetered, 63 A/phase).

    S1: 3-phase, rotated (station L1 -> grid L2, L2 -> L3, L3 -> L1) at panel, 32 A.
    S2: single-phase on grid L3 at trafo, 16 A.
    S3: two EVSEs at panel; EVSE 2 single-phase on grid L1.
    """
    data: dict[str, Any] = {
        "nodes": [
            {"id": "trafo", "kind": "transformer", "limit_a": [100, 100, 100], "metered": True},
            {"id": "panel", "parent": "trafo", "limit_a": [63, 63, 63]},
        ],
        "stations": [
            {
                "id": "S1",
                "node": "panel",
                "phase_map": ["L2", "L3", "L1"],
                "max_current_a": 32,
                "fallback_current_a": 6,
            },
            {"id": "S2", "node": "trafo", "phase_map": ["L3"], "max_current_a": 16, "fallback_current_a": 6},
            {
                "id": "S3",
                "node": "panel",
                "max_current_a": 32,
                "fallback_current_a": 6,
                "evses": [{"id": 1}, {"id": 2, "phase_map": ["L1"], "max_current_a": 16}],
            },
        ],
    }
    return parse_topology(data)


def sv(measurand: str, value: float, phase: str = "", unit: str = "", location: str = "") -> station_pb2.SampledValue:
    return station_pb2.SampledValue(measurand=measurand, value=value, phase=phase, unit=unit, location=location)


def mv(station: str, evse: int, t: float, *values: station_pb2.SampledValue, tx: str = "") -> station_pb2.MeterValues:
    return station_pb2.MeterValues(
        station_id=station, evse_id=evse, sampled_at=to_timestamp(t), values=list(values), transaction_id=tx
    )


def phase_power(
    station: str, evse: int, t: float, l1: float, l2: float = 0.0, l3: float = 0.0, **kw: Any
) -> station_pb2.MeterValues:
    vals = [sv("Power.Active.Import", l1, "L1", "W")]
    if l2 or l3:
        vals += [sv("Power.Active.Import", l2, "L2", "W"), sv("Power.Active.Import", l3, "L3", "W")]
    return mv(station, evse, t, *vals, **kw)


def event(station: str, t: float, **payload: Any) -> station_pb2.StationEvent:
    return station_pb2.StationEvent(station_id=station, occurred_at=to_timestamp(t), **payload)


def heartbeat(station: str, t: float) -> station_pb2.StationEvent:
    return event(station, t, heartbeat=station_pb2.Heartbeat())


def status(station: str, evse: int, t: float, st: str) -> station_pb2.StationEvent:
    return event(station, t, status=station_pb2.Status(evse_id=evse, connector_id=1, status=st))


def grid(
    node: str, t: float, l1: float, l2: float, l3: float, meter: str = "m1", ambient: float = float("nan")
) -> grid_pb2.GridMeterReading:
    return grid_pb2.GridMeterReading(
        node_id=node,
        meter_id=meter,
        measured_at=to_timestamp(t),
        power_w=phase_values((l1, l2, l3)),
        ambient_temperature_c=ambient,
    )


def set_profile(
    station: str,
    evse: int,
    limit_a: float,
    command_id: str = "c1",
    purpose: command_pb2.ProfilePurpose.ValueType = command_pb2.PROFILE_PURPOSE_TX,
) -> command_pb2.StationCommand:
    prof = command_pb2.ChargingProfile(
        profile_id=1,
        purpose=purpose,
        rate_unit=common_pb2.RATE_UNIT_A,
        periods=[command_pb2.SchedulePeriod(start_period_s=0, limit=limit_a)],
    )
    return command_pb2.StationCommand(
        command_id=command_id,
        station_id=station,
        set_charging_profile=command_pb2.SetChargingProfile(evse_id=evse, profile=prof),
    )


def result(station: str, command_id: str, outcome: command_pb2.CommandOutcome.ValueType) -> command_pb2.CommandResult:
    return command_pb2.CommandResult(command_id=command_id, station_id=station, outcome=outcome)
