"""Prometheus metrics shared by all services (names in docs/metrics.md; no per-station labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

BUILD_INFO = Gauge("gridcharge_build_info", "Build information (value 1).", ["service", "version"])
BUS_MESSAGES = Counter(
    "gridcharge_bus_messages_total",
    "Records published (out) or handled (in) on the bus.",
    ["topic", "direction"],
)
BUS_DEAD_LETTERS = Counter(
    "gridcharge_bus_dead_letters_total",
    "Records a handler could not process, sent to the dead-letter topic.",
    ["topic", "reason"],
)
