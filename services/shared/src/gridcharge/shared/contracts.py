"""Topic registry: every bus topic with its key, message type, retention and who uses it.

docs/topics.md is generated from this table (`make docs-topics`), so the two cannot drift.
Message classes are generated from proto/ (see proto/generate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message
from gridcharge.audit.v1 import audit_pb2
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.plan.v1 import plan_pb2
from gridcharge.station.v1 import station_pb2

DAY_MS = 86_400_000

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Topic:
    name: str
    message: type[Message]
    key: str  # what the record key is
    compacted: bool  # latest value per key wins
    retention_ms: int  # -1 = forever (compacted topics)
    partitions: int
    producers: str
    consumers: str

    def decode(self, value: bytes) -> Message:
        msg = self.message()
        msg.ParseFromString(value)
        return msg


STATION_EVENTS = Topic(
    "gridcharge.station.events.v1",
    station_pb2.StationEvent,
    "station_id",
    False,
    7 * DAY_MS,
    12,
    "gateway",
    "allocation, telemetry",
)
METER_VALUES = Topic(
    "gridcharge.station.meter-values.v1",
    station_pb2.MeterValues,
    "station_id",
    False,
    2 * DAY_MS,
    12,
    "gateway",
    "telemetry, allocation",
)
STATION_CAPABILITIES = Topic(
    "gridcharge.station.capabilities.v1",
    station_pb2.StationCapabilities,
    "station_id",
    True,
    -1,
    12,
    "gateway",
    "allocation",
)
COMMANDS = Topic(
    "gridcharge.station.commands.v1",
    command_pb2.StationCommand,
    "station_id",
    False,
    1 * DAY_MS,
    12,
    "allocation, operator API",
    "gateway",
)
COMMAND_RESULTS = Topic(
    "gridcharge.station.command-results.v1",
    command_pb2.CommandResult,
    "station_id",
    False,
    1 * DAY_MS,
    12,
    "gateway",
    "allocation, operator API",
)
GRID_METER_READINGS = Topic(
    "gridcharge.grid.meter-readings.v1",
    grid_pb2.GridMeterReading,
    "node_id",
    False,
    2 * DAY_MS,
    6,
    "SCADA/AMI, telemetry HTTP ingest, simulator",
    "telemetry",
)
NODE_LOAD = Topic(
    "gridcharge.grid.node-load.v1",
    grid_pb2.NodeLoad,
    "node_id",
    True,
    -1,
    6,
    "telemetry",
    "allocation (limiter), forecasting",
)
NODE_LOAD_HISTORY = Topic(
    "gridcharge.grid.node-load-history.v1",
    grid_pb2.NodeLoadInterval,
    "node_id",
    False,
    35 * DAY_MS,
    6,
    "telemetry",
    "forecasting",
)
EXTERNAL_LIMITS = Topic(
    "gridcharge.grid.external-limits.v1",
    grid_pb2.ExternalLimit,
    "node_id (station-scoped limits: node_id/limit_id)",
    True,
    -1,
    6,
    "DSO adapters, operator API, gateway (OCPP NotifyChargingLimit)",
    "forecasting, allocation",
)
PRICES = Topic(
    "gridcharge.grid.prices.v1",
    grid_pb2.PriceSignal,
    "node_id/price_id (* for the whole site)",
    True,
    -1,
    6,
    "gridsignals (OpenADR PRICE events)",
    "allocation",
)
WEATHER = Topic(
    "gridcharge.forecast.weather.v1",
    forecast_pb2.WeatherForecast,
    "site_id",
    True,
    -1,
    6,
    "forecasting",
    "forecasting, simulator",
)
HEADROOM = Topic(
    "gridcharge.forecast.headroom.v1",
    forecast_pb2.HeadroomForecast,
    "node_id",
    True,
    -1,
    6,
    "forecasting",
    "allocation",
)
SESSION_PLANS = Topic(
    "gridcharge.plan.sessions.v1",
    plan_pb2.SessionPlan,
    "session_id",
    True,
    -1,
    12,
    "allocation",
    "dashboards, operator API",
)
NODE_PLANS = Topic(
    "gridcharge.plan.nodes.v1", plan_pb2.NodePlan, "node_id", True, -1, 6, "allocation", "dashboards, operator API"
)
DEAD_LETTERS = Topic(
    "gridcharge.deadletter.v1",
    common_pb2.DeadLetter,
    "source topic",
    False,
    14 * DAY_MS,
    3,
    "every consumer",
    "operators",
)
AUDIT_EVENTS = Topic(
    "gridcharge.audit.events.v1",
    audit_pb2.AuditEvent,
    "service",
    False,
    365 * DAY_MS,
    3,
    "every operator HTTP API (the shared HTTP edge)",
    "operators, SIEM",
)

ALL_TOPICS: tuple[Topic, ...] = (
    STATION_EVENTS,
    METER_VALUES,
    STATION_CAPABILITIES,
    COMMANDS,
    COMMAND_RESULTS,
    GRID_METER_READINGS,
    NODE_LOAD,
    NODE_LOAD_HISTORY,
    EXTERNAL_LIMITS,
    PRICES,
    WEATHER,
    HEADROOM,
    SESSION_PLANS,
    NODE_PLANS,
    DEAD_LETTERS,
    AUDIT_EVENTS,
)
TOPICS_BY_NAME = {t.name: t for t in ALL_TOPICS}


def decode(message_type: type[M], value: bytes) -> M:
    """Parse bytes into a message of `message_type` (raises DecodeError on garbage)."""
    msg = message_type()
    msg.ParseFromString(value)
    return msg


def topics_markdown() -> str:
    """The topic table for docs/topics.md."""
    rows = [
        "| topic | key | message | cleanup / retention | partitions | producers | consumers |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in ALL_TOPICS:
        ret = "compact" if t.compacted else f"delete, {t.retention_ms // DAY_MS} d"
        rows.append(
            f"| `{t.name}` | {t.key} | `{t.message.DESCRIPTOR.full_name}` | {ret} | {t.partitions} "
            f"| {t.producers} | {t.consumers} |"
        )
    return "\n".join(rows) + "\n"
