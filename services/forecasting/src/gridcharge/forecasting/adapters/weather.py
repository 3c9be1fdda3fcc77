"""Weather provider adapter: an async httpx client for an Open-Meteo-compatible forecast API, and readers
for recorded responses (JSON as returned by the API, or Open-Meteo's CSV export).

- timeouts per request; retries with exponential back-off (+ jitter) on connect errors, timeouts,
  HTTP 5xx and 429 (``Retry-After`` honoured up to the back-off cap); other 4xx fail at once;
- an in-memory cache keyed by (lat, lon rounded to ``cache_decimals``, UTC hour) with a TTL;
- :class:`WeatherUnavailable` names the URL and the last failure when every attempt failed;
- the service's weather sources: :class:`ApiWeather` (the API, timed on the service clock) and
  :class:`RecordedWeather` (a recorded file).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from gridcharge.forecasting.adapters.metrics import WEATHER_REQUESTS
from gridcharge.forecasting.core.weather import OPEN_METEO_VARIABLES, WeatherSeries, parse_open_meteo
from gridcharge.shared.clock import Clock

HOURLY_VARIABLES = (
    "temperature_2m",
    "shortwave_radiation",
    "direct_normal_irradiance",
    "diffuse_radiation",
    "cloud_cover",
    "wind_speed_10m",
)
MINUTELY_15_VARIABLES = ("shortwave_radiation", "direct_normal_irradiance", "diffuse_radiation", "temperature_2m")


class WeatherUnavailable(RuntimeError):
    """The weather provider could not deliver a forecast (after retries)."""

    def __init__(self, url: str, last_error: str, attempts: int) -> None:
        self.url = url
        self.last_error = last_error
        self.attempts = attempts
        super().__init__(f"weather provider unavailable: {url} ({attempts} attempt(s); last failure: {last_error})")


@dataclass(frozen=True)
class WeatherClientConfig:
    """Client settings. Times in seconds."""

    base_url: str = "https://api.open-meteo.com"
    path: str = "/v1/forecast"
    timeout_s: float = 10.0
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    cache_ttl_s: float = 900.0
    cache_decimals: int = 2
    forecast_days: int = 3
    minutely_15: bool = True


class OpenMeteoClient:
    """Async client; one instance per process (it keeps a connection pool and the cache).

    ``now`` (POSIX s) and ``sleep`` are injectable so tests and simulations control time; ``on_request`` is
    called once per HTTP attempt with its outcome (``ok``, ``error``, ``timeout``) for metrics; cache hits
    make no request and are not reported.
    """

    def __init__(
        self,
        config: WeatherClientConfig | None = None,
        *,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_request: Callable[[str], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config or WeatherClientConfig()
        self._now = now
        self._sleep = sleep
        self._on_request = on_request or (lambda outcome: None)
        self._http = httpx.AsyncClient(
            base_url=self.config.base_url.rstrip("/"),
            timeout=httpx.Timeout(self.config.timeout_s),
            transport=transport,
            headers={"User-Agent": "gridcharge-forecasting"},
        )
        self._cache: dict[tuple[float, float, int], tuple[float, dict[str, Any]]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> OpenMeteoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def params(self, latitude: float, longitude: float) -> dict[str, str]:
        """Query parameters of a forecast request."""
        p = {
            "latitude": f"{latitude:.4f}",
            "longitude": f"{longitude:.4f}",
            "hourly": ",".join(HOURLY_VARIABLES),
            "timezone": "UTC",
            "wind_speed_unit": "ms",
            "forecast_days": str(self.config.forecast_days),
        }
        if self.config.minutely_15:
            p["minutely_15"] = ",".join(MINUTELY_15_VARIABLES)
        return p

    def _cache_key(self, latitude: float, longitude: float) -> tuple[float, float, int]:
        d = self.config.cache_decimals
        return (round(latitude, d), round(longitude, d), int(self._now() // 3600))

    def _backoff_s(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.config.backoff_initial_s * 2 ** (attempt - 1), self.config.backoff_max_s)
        if retry_after is not None:
            try:
                delay = min(max(delay, float(retry_after)), self.config.backoff_max_s)
            except ValueError:
                pass
        return delay * (1.0 + 0.1 * random.random())

    async def fetch_json(self, latitude: float, longitude: float) -> dict[str, Any]:
        """Raw API response for a location (cached). Raises :class:`WeatherUnavailable`."""
        key = self._cache_key(latitude, longitude)
        hit = self._cache.get(key)
        if hit is not None and self._now() - hit[0] <= self.config.cache_ttl_s:
            return hit[1]
        params = self.params(latitude, longitude)
        url = str(self._http.base_url.join(self.config.path).copy_merge_params(params))
        last_error = "no attempt made"
        attempts = 0
        for attempt in range(1, max(self.config.max_attempts, 1) + 1):
            attempts = attempt
            retry_after: str | None = None
            try:
                response = await self._http.get(self.config.path, params=params)
            except httpx.TransportError as exc:  # connect errors, timeouts, protocol errors
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._on_request("timeout" if isinstance(exc, httpx.TimeoutException) else "error")
            else:
                if response.status_code == 200:
                    try:
                        payload = response.json()
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        last_error = f"invalid JSON: {exc}"
                        self._on_request("error")
                    else:
                        if isinstance(payload, dict) and not payload.get("error"):
                            self._cache[key] = (self._now(), payload)
                            self._on_request("ok")
                            return payload
                        last_error = f"error payload: {str(payload)[:200]}"
                        self._on_request("error")
                        raise WeatherUnavailable(url, last_error, attempt)
                else:
                    last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                    self._on_request("error")
                    if response.status_code != 429 and response.status_code < 500:
                        raise WeatherUnavailable(url, last_error, attempt)
                    retry_after = response.headers.get("Retry-After")
            if attempt < self.config.max_attempts:
                await self._sleep(self._backoff_s(attempt, retry_after))
        raise WeatherUnavailable(url, last_error, attempts)

    async def get_forecast(self, latitude: float, longitude: float) -> WeatherSeries:
        """Parsed forecast for a location. Raises :class:`WeatherUnavailable` (also for a malformed body)."""
        payload = await self.fetch_json(latitude, longitude)
        try:
            return parse_open_meteo(payload)
        except ValueError as exc:
            raise WeatherUnavailable(self.config.base_url + self.config.path, f"bad payload: {exc}", 1) from exc


def _strip_unit(header: str) -> str:
    """'temperature_2m (°C)' → 'temperature_2m'."""
    return header.split(" (")[0].strip()


def _csv_payload(text: str, latitude: float | None, longitude: float | None) -> dict[str, Any]:
    lines = [line for line in text.splitlines()]
    meta: dict[str, Any] = {}
    if lines and lines[0].startswith("latitude"):
        # Open-Meteo CSV export: a metadata header row + values row, a blank line, then the data table.
        meta_rows = list(csv.reader(lines[:2]))
        meta = dict(zip(meta_rows[0], meta_rows[1], strict=False))
        lines = lines[2:]
    body = "\n".join(line for line in lines if line.strip())
    reader = csv.DictReader(io.StringIO(body))
    if reader.fieldnames is None or _strip_unit(reader.fieldnames[0]) != "time":
        raise ValueError("CSV weather needs a 'time' column first")
    columns: dict[str, list[Any]] = {}
    units: dict[str, str] = {}
    for name in reader.fieldnames:
        base = _strip_unit(name)
        columns[base] = []
        if "(" in name:
            units[base] = name.split("(", 1)[1].rstrip(")").strip()
    for row in reader:
        for name, value in row.items():
            base = _strip_unit(name)
            if base == "time":
                columns[base].append(value)
            else:
                columns[base].append(None if value in ("", None) else float(value))
    lat = latitude if latitude is not None else float(meta.get("latitude", "nan"))
    lon = longitude if longitude is not None else float(meta.get("longitude", "nan"))
    times = columns.get("time", [])
    step_s = 3600
    if len(times) > 1:
        from datetime import datetime

        t0, t1 = (datetime.fromisoformat(str(x).replace("Z", "+00:00")) for x in times[:2])
        step_s = int((t1 - t0).total_seconds())
    block = "minutely_15" if step_s == 900 else "hourly"
    units.setdefault("wind_speed_10m", "m/s")
    return {
        "latitude": lat,
        "longitude": lon,
        "utc_offset_seconds": int(meta.get("utc_offset_seconds", 0) or 0),
        block: {k: v for k, v in columns.items() if k == "time" or k in OPEN_METEO_VARIABLES},
        f"{block}_units": units,
    }


def read_recorded_weather(
    path: str | Path, latitude: float | None = None, longitude: float | None = None
) -> WeatherSeries:
    """Read a recorded forecast: ``.json`` (the API response) or ``.csv`` (Open-Meteo CSV export, or a
    plain table ``time,<open-meteo variable>...`` with wind in m/s unless a unit suffix says otherwise).
    ``latitude``/``longitude`` override/provide the location for plain CSV files."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    payload: Mapping[str, Any]
    if p.suffix.lower() == ".json":
        payload = json.loads(text)
        if latitude is not None or longitude is not None:
            payload = {
                **payload,
                "latitude": payload.get("latitude") if latitude is None else latitude,
                "longitude": payload.get("longitude") if longitude is None else longitude,
            }
    elif p.suffix.lower() == ".csv":
        payload = _csv_payload(text, latitude, longitude)
    else:
        raise ValueError(f"{p}: recorded weather must be .json or .csv")
    return parse_open_meteo(payload)


class ApiWeather:
    """The Open-Meteo-compatible HTTP API (with retries and cache), timed on the service clock."""

    def __init__(self, base_url: str, clock: Clock, timeout_s: float) -> None:
        self.name = base_url
        self.client = OpenMeteoClient(
            WeatherClientConfig(base_url=base_url, timeout_s=timeout_s),
            now=clock.time,
            sleep=clock.sleep,
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
