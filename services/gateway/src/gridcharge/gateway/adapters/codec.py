"""Bus records the gateway's adapters write and read besides station events: the CommandResult of a
command, and a station's capabilities (StationCapabilities ⇄ `core.profiles.Capabilities`). Station
messages → events are `core.mapping`; timestamps and Meta come from `gridcharge.shared.codec`."""

from __future__ import annotations

from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.gateway.core.errors import Version, cap
from gridcharge.gateway.core.mapping import OCPP_VERSION
from gridcharge.gateway.core.profiles import Capabilities
from gridcharge.shared.codec import meta
from gridcharge.station.v1 import station_pb2

_RATE_UNIT = {"A": common_pb2.RATE_UNIT_A, "W": common_pb2.RATE_UNIT_W}


def command_result(
    cmd: command_pb2.StationCommand,
    outcome: command_pb2.CommandOutcome.ValueType,
    producer: str,
    now_s: float,
    *,
    action: str,
    status: str = "",
    error_code: str = "",
    error_description: str = "",
    response_json: str = "",
    round_trip_s: float = 0.0,
) -> command_pb2.CommandResult:
    """The one CommandResult of ``cmd`` (traced with the command's trace id)."""
    return command_pb2.CommandResult(
        meta=meta(producer, now_s, trace_id=cmd.meta.trace_id),
        command_id=cmd.command_id,
        station_id=cmd.station_id,
        generation=cmd.generation,
        command_key=cmd.command_key,
        outcome=outcome,
        status=status,
        error_code=error_code,
        error_description=cap(error_description),
        response_json=response_json,
        round_trip_s=round_trip_s,
        action=action,
    )


def capabilities_record(
    station_id: str,
    version: Version,
    caps: Capabilities,
    producer: str,
    read_at_s: float,
    *,
    number_of_evses: int,
    supports_smart_charging: bool,
    read_complete: bool,
) -> station_pb2.StationCapabilities:
    """What a station said it can do with profiles, for the bus and the store (unknown values as 0)."""
    return station_pb2.StationCapabilities(
        meta=meta(producer, read_at_s),
        station_id=station_id,
        ocpp_version=OCPP_VERSION[version],
        max_stack_level=caps.max_stack_level or 0,
        allowed_rate_units=[_RATE_UNIT[u] for u in sorted(caps.allowed_rate_units)],
        max_periods_per_schedule=caps.max_periods or 0,
        max_profiles_installed=caps.max_profiles_installed or 0,
        number_of_evses=number_of_evses,
        supports_smart_charging=supports_smart_charging,
        read_complete=read_complete,
    )


def capabilities_of(msg: station_pb2.StationCapabilities) -> Capabilities:
    """A stored StationCapabilities back as what profile checks use (0 = unknown, except a stack level
    that a complete read reported as 0)."""
    return Capabilities(
        max_stack_level=msg.max_stack_level if msg.read_complete or msg.max_stack_level else None,
        allowed_rate_units=frozenset("A" if u == common_pb2.RATE_UNIT_A else "W" for u in msg.allowed_rate_units),
        max_periods=msg.max_periods_per_schedule or None,
        max_profiles_installed=msg.max_profiles_installed or None,
    )
