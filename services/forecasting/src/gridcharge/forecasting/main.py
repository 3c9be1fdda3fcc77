"""Wiring of the forecasting service: settings → weather source → ForecastingService; ``main`` for ``python -m``."""

from __future__ import annotations

from gridcharge.forecasting.adapters.weather import ApiWeather, RecordedWeather
from gridcharge.forecasting.core.headroom import HeadroomOptions
from gridcharge.forecasting.core.site import ForecastOptions
from gridcharge.forecasting.service import ForecastingService, ServiceOptions, WeatherSource
from gridcharge.forecasting.settings import ForecastingSettings
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import run_service
from gridcharge.shared.topology import Topology


def create_service(rt: Runtime, topology: Topology) -> ForecastingService:
    """Factory used by `gridcharge serve` and `python -m gridcharge.forecasting`."""
    settings = ForecastingSettings.from_env(**rt.settings.model_dump())
    weather: WeatherSource
    if settings.weather_file is not None:
        weather = RecordedWeather(settings.weather_file, rt.clock, settings.weather_file_shift)
    else:
        weather = ApiWeather(settings.weather_base_url, rt.clock, settings.weather_timeout_s)
    options = ServiceOptions(
        weather_refresh_s=settings.weather_refresh_s,
        forecast=ForecastOptions(headroom=HeadroomOptions(pv_credit_factor=settings.pv_credit_factor)),
    )
    return ForecastingService(rt, topology, weather, options)


create_service.service_name = "forecasting"  # type: ignore[attr-defined]


DEFAULT_HTTP_PORT = 8082  # when run alone (docs/DEVELOPING.md); the embedded process serves all on 8080


def main() -> int:
    """Run the forecasting service alone (HTTP on GRIDCHARGE_HTTP_PORT, default 8082)."""
    return run_service("forecasting", [create_service], DEFAULT_HTTP_PORT)
