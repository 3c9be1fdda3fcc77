"""Prometheus metrics of the forecasting service (names and labels fixed in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

HEADROOM_W = Gauge(
    "gridcharge_headroom_watts",
    "Forecast headroom (limit − base load + PV) of the next 15-min slot.",
    ["node", "phase"],
)
PV_FORECAST_W = Gauge(
    "gridcharge_pv_forecast_watts", "Forecast PV production under a node for the next 15-min slot.", ["node"]
)
FORECAST_AGE_S = Gauge("gridcharge_forecast_age_seconds", "Age of the newest forecast of that kind.", ["kind"])
FORECAST_RUNS = Counter(
    "gridcharge_forecast_runs_total",
    "Forecast computations; fallback = worst-case forecast used because an input was missing.",
    ["kind", "outcome"],
)
WEATHER_REQUESTS = Counter("gridcharge_weather_requests_total", "Calls to the weather API.", ["outcome"])
WEATHER_MISSING_SLOTS = Gauge(
    "gridcharge_weather_missing_slots",
    "Slots of the latest headroom forecast without weather (PV counted 0, ambient at the hot fallback there).",
)
