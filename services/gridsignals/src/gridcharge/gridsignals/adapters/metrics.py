"""Prometheus metrics of the grid-signals service (docs/metrics.md); no per-station or per-event labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

VTN_UP = Gauge("gridcharge_openadr_vtn_up", "1 while the last poll of the VTN succeeded, else 0.")
VTN_LAST_SUCCESS = Gauge(
    "gridcharge_openadr_vtn_last_success_timestamp_seconds",
    "POSIX time of the last successful poll of the VTN (0 = never).",
)
VTN_UNREACHABLE_S = Gauge(
    "gridcharge_openadr_vtn_unreachable_seconds",
    "Seconds since the last successful poll of the VTN (0 while reachable).",
)
FALLBACK_ACTIVE = Gauge(
    "gridcharge_openadr_fallback_active", "1 while the configured fallback limits apply because the VTN is unreachable."
)
REQUESTS = Counter("gridcharge_openadr_requests_total", "Polls and report uploads to the VTN.", ["kind", "outcome"])
EVENTS = Counter(
    "gridcharge_openadr_events_total",
    "Events seen by what the VEN did with them (limit, unmapped, no_limit, price, export_price, invalid).",
    ["outcome"],
)
LIMITS_ACTIVE = Gauge("gridcharge_openadr_limits", "ExternalLimits the VEN currently keeps on the bus.")
LIMIT_UPDATES = Counter("gridcharge_openadr_limit_updates_total", "ExternalLimit records published.", ["action"])
PRICES_ACTIVE = Gauge("gridcharge_openadr_prices", "PriceSignals the VEN currently keeps on the bus.")
PRICE_UPDATES = Counter("gridcharge_openadr_price_updates_total", "PriceSignal records published.", ["action"])
