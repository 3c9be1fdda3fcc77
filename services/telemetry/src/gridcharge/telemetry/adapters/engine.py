"""Decodes bus records, drives the pure core and builds the messages to publish.

Shared by both runtimes (in-process bus and faust): only how records arrive and where state is
kept differs. Garbage bytes are logged and skipped (never raised), so a poison message cannot put a
consumer into a crash loop.
"""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError, Message
from gridcharge.command.v1 import command_pb2
from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts as C
from gridcharge.shared.bus.base import Outgoing
from gridcharge.shared.topology import PHASES
from gridcharge.station.v1 import station_pb2
from gridcharge.telemetry.adapters.codec import interval_msg, node_load_msg
from gridcharge.telemetry.adapters.metrics import TelemetryMetrics
from gridcharge.telemetry.core import IntervalAccumulator, NodeLoadView, Outcome, TelemetryCore

log = logging.getLogger(__name__)

# topic -> (message type, reading kind for metrics)
INPUTS: dict[str, tuple[type[Message], str]] = {
    C.METER_VALUES.name: (station_pb2.MeterValues, "station"),
    C.STATION_EVENTS.name: (station_pb2.StationEvent, "station_event"),
    C.GRID_METER_READINGS.name: (grid_pb2.GridMeterReading, "meter"),
    C.COMMANDS.name: (command_pb2.StationCommand, "command"),
    C.COMMAND_RESULTS.name: (command_pb2.CommandResult, "command_result"),
    C.WEATHER.name: (forecast_pb2.WeatherForecast, "weather"),
}
COUNTED_KINDS = ("station", "meter")  # readings_total counts meter data; events/commands are not readings


class Engine:
    """Core + history + metrics, fed with raw record values."""

    def __init__(self, core: TelemetryCore, metrics: TelemetryMetrics, producer: str) -> None:
        self.core = core
        self.metrics = metrics
        self.producer = producer
        self.history = IntervalAccumulator(core.cfg.history_interval_s)
        self.poison = 0

    def handle(self, topic: str, value: bytes, now_s: float) -> Outcome | None:
        """Apply one record; None when it was not decodable (logged, counted, skipped)."""
        spec = INPUTS.get(topic)
        if spec is None:
            return None
        msg_type, kind = spec
        try:
            msg = C.decode(msg_type, value)
        except (DecodeError, ValueError, TypeError) as exc:
            self.poison += 1
            if kind in COUNTED_KINDS:
                self.metrics.readings.labels(kind=kind, outcome="implausible").inc()
            log.warning(
                "undecodable record skipped", extra={"topic": topic, "bytes": len(value), "error": repr(exc)[:200]}
            )
            return None
        try:
            outcome = self._apply(msg, now_s)
        except Exception:  # a bug for one record must not stop the stream
            log.exception("telemetry could not apply a record", extra={"topic": topic})
            return None
        if kind in COUNTED_KINDS:
            self.metrics.readings.labels(kind=kind, outcome=outcome.value).inc()
        return outcome

    def _apply(self, msg: Message, now_s: float) -> Outcome:
        c = self.core
        if isinstance(msg, station_pb2.MeterValues):
            return c.on_meter_values(msg, now_s)
        if isinstance(msg, station_pb2.StationEvent):
            return c.on_station_event(msg, now_s)
        if isinstance(msg, grid_pb2.GridMeterReading):
            return c.on_grid_reading(msg, now_s)
        if isinstance(msg, command_pb2.StationCommand):
            return c.on_command(msg, now_s)
        if isinstance(msg, command_pb2.CommandResult):
            return c.on_command_result(msg, now_s)
        if isinstance(msg, forecast_pb2.WeatherForecast):
            return c.on_weather(msg, now_s)
        return Outcome.OK

    def node_load_records(self, views: dict[str, NodeLoadView], node_ids: list[str]) -> list[Outgoing]:
        """NodeLoad records of some nodes (the fast path: no history, no metrics)."""
        return [
            Outgoing(C.NODE_LOAD.name, nid, node_load_msg(views[nid], self.producer).SerializeToString())
            for nid in node_ids
            if nid in views
        ]

    def snapshot(self, now_s: float) -> tuple[dict[str, NodeLoadView], list[Outgoing]]:
        """Node loads now, and the NodeLoad / closed NodeLoadInterval records to publish."""
        views = self.core.node_loads(now_s)
        out = [
            Outgoing(C.NODE_LOAD.name, nid, node_load_msg(v, self.producer).SerializeToString())
            for nid, v in views.items()
        ]
        for iv in self.history.add(views):
            out.append(
                Outgoing(
                    C.NODE_LOAD_HISTORY.name, iv.node_id, interval_msg(iv, self.producer, now_s).SerializeToString()
                )
            )
        m = self.metrics
        for nid, v in views.items():
            for k, ph in enumerate(PHASES):
                m.node_load.labels(node=nid, phase=ph).set(v.load_w[k])
                if m.set_limits:
                    m.node_limit.labels(node=nid, phase=ph).set(v.limit_w[k])
        for kind, n in self.core.stale_counts(now_s).items():
            m.stale.labels(kind=kind).set(n)
        return views, out
