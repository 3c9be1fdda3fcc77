"""Prometheus metrics of the control-box service (docs/metrics.md); node labels only (no station labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DIMMING_LIMIT_W = Gauge(
    "gridcharge_controlbox_limit_watts",
    "§14a limit in force on the node, W over all phases (NaN when not dimmed).",
    ["node"],
)
DIMMING_ACTIVE = Gauge(
    "gridcharge_controlbox_dimming_active",
    "1 while a §14a dimming is in force, by reason.",
    ["node", "reason"],
)
INPUT_READS = Counter(
    "gridcharge_controlbox_input_reads_total",
    "Reads and writes of the control-box inputs.",
    ["input", "outcome"],
)
LIMITS_PUBLISHED = Counter(
    "gridcharge_controlbox_limits_published_total",
    "ExternalLimit messages sent (kind: limit, withdraw).",
    ["kind"],
)
