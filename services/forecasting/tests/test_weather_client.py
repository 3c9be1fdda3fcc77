"""The real httpx weather client against a scripted local HTTP server."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from gridcharge.forecasting.adapters.weather import OpenMeteoClient, WeatherClientConfig, WeatherUnavailable

WeatherServer = Any  # the conftest fixture type (conftest is not importable under importlib mode)


async def _no_sleep(_: float) -> None:
    return None


def _client(url: str, outcomes: list[str] | None = None, **kw: float) -> OpenMeteoClient:
    cfg = WeatherClientConfig(base_url=url, timeout_s=kw.pop("timeout_s", 2.0), backoff_initial_s=0.01, **kw)  # type: ignore[arg-type]
    return OpenMeteoClient(cfg, sleep=_no_sleep, on_request=(outcomes.append if outcomes is not None else None))


async def test_fetch_parses_recorded_response(weather_server: WeatherServer, recorded_forecast_bytes: bytes) -> None:
    weather_server.answer((200, 0.0, recorded_forecast_bytes))
    async with _client(weather_server.url) as client:
        series = await client.get_forecast(48.0, 7.85)
    assert series.resolution == "minutely_15"
    assert {"ghi_w_m2", "temp_air_c", "wind_speed_m_s", "dni_w_m2", "dhi_w_m2"} <= set(series.frame.columns)
    path = weather_server.script.requests[0]
    assert path.startswith("/v1/forecast?")
    for part in (
        "latitude=48.0000",
        "longitude=7.8500",
        "timezone=UTC",
        "forecast_days=3",
        "wind_speed_unit=ms",
        "shortwave_radiation",
        "minutely_15=",
    ):
        assert part in path


async def test_retries_after_500s_then_succeeds(weather_server: WeatherServer, recorded_forecast_bytes: bytes) -> None:
    weather_server.answer((500, 0.0, b"oops"), (503, 0.0, b"busy"), (200, 0.0, recorded_forecast_bytes))
    outcomes: list[str] = []
    async with _client(weather_server.url, outcomes) as client:
        series = await client.get_forecast(48.0, 7.85)
    assert len(series.frame) > 0
    assert len(weather_server.script.requests) == 3
    assert outcomes == ["error", "error", "ok"]


async def test_429_is_retried(weather_server: WeatherServer, recorded_forecast_bytes: bytes) -> None:
    weather_server.answer((429, 0.0, b"slow down", {"Retry-After": "0"}), (200, 0.0, recorded_forecast_bytes))
    async with _client(weather_server.url) as client:
        await client.fetch_json(48.0, 7.85)
    assert len(weather_server.script.requests) == 2


async def test_persistent_500_names_url_and_last_failure(weather_server: WeatherServer) -> None:
    weather_server.answer((500, 0.0, b"internal"))
    async with _client(weather_server.url, max_attempts=3) as client:
        with pytest.raises(WeatherUnavailable) as info:
            await client.fetch_json(48.0, 7.85)
    assert weather_server.url in str(info.value) and "/v1/forecast" in str(info.value)
    assert "HTTP 500" in info.value.last_error
    assert info.value.attempts == 3 and len(weather_server.script.requests) == 3


async def test_client_error_is_not_retried(weather_server: WeatherServer) -> None:
    weather_server.answer((400, 0.0, b'{"error":true,"reason":"bad latitude"}'))
    async with _client(weather_server.url) as client:
        with pytest.raises(WeatherUnavailable, match="HTTP 400"):
            await client.fetch_json(148.0, 7.85)
    assert len(weather_server.script.requests) == 1


async def test_timeout_is_retried_then_reported(weather_server: WeatherServer, recorded_forecast_bytes: bytes) -> None:
    weather_server.answer((200, 1.0, recorded_forecast_bytes))
    outcomes: list[str] = []
    async with _client(weather_server.url, outcomes, timeout_s=0.2, max_attempts=2) as client:
        with pytest.raises(WeatherUnavailable) as info:
            await client.fetch_json(48.0, 7.85)
    assert "Timeout" in info.value.last_error
    assert outcomes == ["timeout", "timeout"]
    assert info.value.attempts == 2


async def test_timeout_then_success(weather_server: WeatherServer, recorded_forecast_bytes: bytes) -> None:
    weather_server.answer((200, 1.0, recorded_forecast_bytes), (200, 0.0, recorded_forecast_bytes))
    async with _client(weather_server.url, timeout_s=0.3) as client:
        payload = await client.fetch_json(48.0, 7.85)
    assert "hourly" in payload


async def test_provider_down_raises_connect_error_message() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    async with _client(url, max_attempts=3) as client:
        with pytest.raises(WeatherUnavailable) as info:
            await client.fetch_json(48.0, 7.85)
    assert url in str(info.value)
    assert "ConnectError" in info.value.last_error


async def test_cache_hits_within_hour_and_ttl(weather_server: WeatherServer, recorded_forecast_bytes: bytes) -> None:
    weather_server.answer((200, 0.0, recorded_forecast_bytes))
    now = [3600.0 * 1000 + 10]
    outcomes: list[str] = []
    cfg = WeatherClientConfig(base_url=weather_server.url, cache_ttl_s=900)
    async with OpenMeteoClient(cfg, now=lambda: now[0], sleep=_no_sleep, on_request=outcomes.append) as client:
        await client.fetch_json(48.0, 7.85)
        await client.fetch_json(48.001, 7.8499)  # same rounded location → cached
        now[0] += 1000  # beyond the TTL
        await client.fetch_json(48.0, 7.85)
        await client.fetch_json(52.5, 13.4)  # another location
    assert outcomes == ["ok", "ok", "ok"]  # the cache hit made no request
    assert len(weather_server.script.requests) == 3


async def test_malformed_body_is_weather_unavailable(weather_server: WeatherServer) -> None:
    weather_server.answer((200, 0.0, b'{"latitude": 1, "longitude": 2}'))
    async with _client(weather_server.url) as client:
        with pytest.raises(WeatherUnavailable, match="bad payload"):
            await client.get_forecast(1.0, 2.0)
