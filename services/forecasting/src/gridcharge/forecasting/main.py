"""Wiring of the forecasting service: settings → weather source → ForecastingService. Nothing else."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from gridcharge.forecasting.adapters.weather import (
    OpenMeteoClient,
    WeatherClientConfig,
    read_recorded_weather,
)
from gridcharge.forecasting.core.headroom import HeadroomOptions
from gridcharge.forecasting.core.site import ForecastOptions
from gridcharge.forecasting.core.weather import WeatherSeries
from gridcharge.forecasting.metrics import WEATHER_REQUESTS
from gridcharge.forecasting.service import ForecastingService, ServiceOptions, WeatherSource
from gridcharge.forecasting.settings import ForecastingSettings
from gridcharge.shared.clock import Clock
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.topology import Topology


class ApiWeather:
    """The Open-Meteo-compatible HTTP API (with retries and cache), timed on the service clock."""

    def __init__(self, base_url: str, clock: Clock, timeout_s: float) -> None:
        self.name = base_url
        self.client = OpenMeteoClient(
            WeatherClientConfig(base_url=base_url, timeout_s=timeout_s),
            now=clock.time, sleep=clock.sleep,
            on_request=lambda outcome: WEATHER_REQUESTS.labels(outcome=outcome).inc(),
        )

    async def get(self, latitude: float, longitude: float) -> WeatherSeries:
        return await self.client.get_forecast(latitude, longitude)

    async def aclose(self) -> None:
        await self.client.aclose()


class RecordedWeather:
    """A recorded forecast file; with ``shift`` its first day is moved to the clock's current day."""

    def __init__(self, path: Path, clock: Clock, shift: bool) -> None:
        self.name = f"file:{path.name}"
        self.path, self.clock, self.shift = path, clock, shift

    async def get(self, latitude: float, longitude: float) -> WeatherSeries:
        series = read_recorded_weather(self.path)
        if not self.shift or series.frame.empty:
            return series
        today = pd.Timestamp(self.clock.time(), unit="s", tz="UTC").floor("D")
        frame = series.frame.copy()
        frame.index = frame.index + (today - frame.index[0].floor("D"))
        return WeatherSeries(series.latitude, series.longitude, frame, series.resolution)

    async def aclose(self) -> None:
        return None


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
