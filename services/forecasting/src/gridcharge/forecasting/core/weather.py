"""Weather on the forecast grid: parse an Open-Meteo-shaped response and resample it to 15-min slots.

Pure functions; fetching lives in :mod:`gridcharge.forecasting.adapters.weather`.

Open-Meteo conventions handled here:
- times are ISO strings in the requested timezone (we always request ``timezone=UTC``);
- radiation variables (``shortwave_radiation`` = GHI, ``direct_normal_irradiance`` = DNI,
  ``diffuse_radiation`` = DHI, W/m²) are means over the *preceding* interval, so an hourly value stamped
  12:00 describes 11:00–12:00; we re-stamp it at the interval centre (11:30) before interpolating;
- ``temperature_2m`` (°C), ``wind_speed_10m`` and ``cloud_cover`` (%) are instantaneous;
- wind speed defaults to km/h unless ``wind_speed_unit=ms`` was requested; ``*_units`` tell which;
- ``null`` values (a model's horizon ended, a gap) are missing; where the ``minutely_15`` block has no value
  for a variable over an hour, the ``hourly`` block's value for that hour is used instead.

Missing data is never filled with optimistic guesses: short gaps are interpolated, values are carried at
most ``max_gap`` (1 h) from where they were given, and slots further away stay NaN — the core then takes the
worst case for exactly those slots (:func:`slots_with_weather`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

# Open-Meteo variable -> our column name (units in the name).
OPEN_METEO_VARIABLES: dict[str, str] = {
    "shortwave_radiation": "ghi_w_m2",
    "direct_normal_irradiance": "dni_w_m2",
    "diffuse_radiation": "dhi_w_m2",
    "temperature_2m": "temp_air_c",
    "wind_speed_10m": "wind_speed_m_s",
    "cloud_cover": "cloud_cover_pct",
}
RADIATION_COLUMNS = ("ghi_w_m2", "dni_w_m2", "dhi_w_m2")
# What a slot needs to count as forecast: PV needs irradiance, PV and the transformer rating need temperature.
REQUIRED_COLUMNS = ("ghi_w_m2", "temp_air_c")
_WIND_TO_M_S = {"m/s": 1.0, "ms": 1.0, "km/h": 1 / 3.6, "kmh": 1 / 3.6, "mph": 0.44704, "kn": 0.514444}


class WeatherFormatError(ValueError):
    """The weather payload does not have the Open-Meteo shape we expect."""


@dataclass(frozen=True)
class WeatherSeries:
    """Weather time series for one location.

    ``frame`` is indexed by UTC timestamps at which each value is *representative* (interval centres for
    radiation already applied) with columns from :data:`OPEN_METEO_VARIABLES` values; missing variables are
    absent columns. ``latitude``/``longitude`` in degrees.
    """

    latitude: float
    longitude: float
    frame: pd.DataFrame
    resolution: str  # "minutely_15" or "hourly": which block the radiation came from


def _block_frame(block: Mapping[str, Any], units: Mapping[str, Any], interval: timedelta) -> pd.DataFrame:
    if "time" not in block:
        raise WeatherFormatError("weather block has no 'time' array")
    index = pd.DatetimeIndex(pd.to_datetime(list(block["time"]), utc=True))
    columns: dict[str, np.ndarray] = {}
    for api_name, column in OPEN_METEO_VARIABLES.items():
        if api_name not in block:
            continue
        values = np.asarray([np.nan if v is None else float(v) for v in block[api_name]], dtype=float)
        if len(values) != len(index):
            raise WeatherFormatError(f"{api_name}: {len(values)} values for {len(index)} times")
        if api_name == "wind_speed_10m":
            unit = str(units.get(api_name, "km/h")).replace(" ", "").lower()
            if unit not in _WIND_TO_M_S:
                raise WeatherFormatError(f"unknown wind speed unit {unit!r}")
            values = values * _WIND_TO_M_S[unit]
        columns[column] = values
    frame = pd.DataFrame(columns, index=index)
    # Radiation is a mean over the preceding interval: re-stamp at the interval centre.
    shifted = frame[[c for c in RADIATION_COLUMNS if c in frame]].copy()
    shifted.index = shifted.index - interval / 2
    instant = frame.drop(columns=list(shifted.columns))
    out = pd.concat([shifted, instant], axis=1, sort=True)
    return out


def _where_quarter_hours_missing(hourly: pd.DataFrame, quarter: pd.DataFrame) -> pd.DataFrame:
    """The hourly values of the variables both blocks have, kept only where the 15-min block has no value
    within ±30 min (the hour the hourly value stands for): it fills the 15-min block's gaps, never mixes in."""
    out = hourly.copy()
    half_hour_s = 1800
    for column in out.columns.intersection(quarter.columns):
        given = quarter[column].dropna().index.as_unit("s").asi8
        at = out.index.as_unit("s").asi8
        if len(given) == 0:
            continue
        i = np.searchsorted(given, at)
        before = np.abs(at - given[np.clip(i - 1, 0, len(given) - 1)])
        after = np.abs(given[np.clip(i, 0, len(given) - 1)] - at)
        covered = np.minimum(before, after) <= half_hour_s
        out.loc[covered, column] = np.nan
    return out


def _merge_blocks(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One frame on the union of the blocks' times; a column in several blocks takes each block's values."""
    merged = frames[0]
    for frame in frames[1:]:
        merged = merged.combine_first(frame)
    return merged.sort_index()


def parse_open_meteo(payload: Mapping[str, Any]) -> WeatherSeries:
    """Parse an Open-Meteo ``/v1/forecast`` JSON response (``timezone=UTC``) into a :class:`WeatherSeries`.

    Uses the ``minutely_15`` block for variables it contains and the ``hourly`` block for the rest.
    Raises :class:`WeatherFormatError` if neither block is usable.
    """
    try:
        latitude = float(payload["latitude"])
        longitude = float(payload["longitude"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeatherFormatError(f"latitude/longitude missing: {exc}") from exc
    offset = payload.get("utc_offset_seconds", 0) or 0
    if offset:
        raise WeatherFormatError(f"expected timezone=UTC, got utc_offset_seconds={offset}")
    frames: list[pd.DataFrame] = []
    resolution = "hourly"
    hourly = payload.get("hourly")
    quarter = payload.get("minutely_15")
    q_frame: pd.DataFrame | None = None
    if isinstance(quarter, Mapping) and quarter.get("time"):
        q_frame = _block_frame(quarter, payload.get("minutely_15_units", {}) or {}, timedelta(minutes=15))
        q_frame = q_frame.dropna(axis=1, how="all")
    if isinstance(hourly, Mapping) and hourly.get("time"):
        h_frame = _block_frame(hourly, payload.get("hourly_units", {}) or {}, timedelta(hours=1))
        if q_frame is not None:
            h_frame = _where_quarter_hours_missing(h_frame, q_frame)
        frames.append(h_frame)
    if q_frame is not None and not q_frame.empty:
        frames.append(q_frame)
        if any(c in q_frame for c in RADIATION_COLUMNS):
            resolution = "minutely_15"
    if not frames:
        raise WeatherFormatError("payload has neither 'hourly' nor 'minutely_15' data")
    frame = frames[0] if len(frames) == 1 else _merge_blocks(frames)
    if "ghi_w_m2" not in frame or "temp_air_c" not in frame:
        raise WeatherFormatError("need at least shortwave_radiation and temperature_2m")
    return WeatherSeries(latitude, longitude, frame, resolution)


def slot_starts(start: datetime | pd.Timestamp, horizon_h: float = 48.0, step_min: int = 15) -> pd.DatetimeIndex:
    """Slot start times (UTC) of the forecast grid: ``start`` floored to ``step_min``, ``horizon_h`` long."""
    first = pd.Timestamp(start)
    first = first.tz_localize("UTC") if first.tzinfo is None else first.tz_convert("UTC")
    first = first.floor(f"{step_min}min")
    periods = round(horizon_h * 60 / step_min)
    return pd.date_range(first, periods=periods, freq=f"{step_min}min")


def slot_midpoints(starts: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Centre of each slot: where slot-average quantities (PV power, load) are evaluated."""
    step = starts[1] - starts[0] if len(starts) > 1 else pd.Timedelta(minutes=15)
    return starts + step / 2


def resample_to(weather: WeatherSeries, times: pd.DatetimeIndex, max_gap: pd.Timedelta | None = None) -> pd.DataFrame:
    """Every weather column on ``times`` (UTC); NaN where the data cannot say.

    Between two given values at most ``2 × max_gap`` apart (the normal spacing, or a short gap: one missing
    hourly value, up to seven 15-min ones) the value is interpolated linearly. Elsewhere — before the first or
    after the last value, inside a longer gap — the nearest value is held for at most ``max_gap`` (default 1 h)
    and the time is NaN beyond that. Radiation is clipped at ≥ 0 W/m². Returns a frame indexed by ``times``.
    """
    gap_s = (pd.Timedelta(hours=1) if max_gap is None else max_gap).total_seconds()
    src = weather.frame.sort_index()
    x = src.index.as_unit("s").asi8.astype(float)
    xt = pd.DatetimeIndex(times).as_unit("s").asi8.astype(float)
    out: dict[str, np.ndarray] = {}
    for column in src.columns:
        series = src[column].to_numpy(dtype=float)
        ok = np.isfinite(series)
        if ok.sum() == 0:
            out[column] = np.full(len(xt), np.nan)
            continue
        xs, ys = x[ok], series[ok]
        values = np.interp(xt, xs, ys)
        nxt = np.searchsorted(xs, xt, side="right")  # xs[nxt - 1] <= t < xs[nxt]
        has_prev, has_next = nxt > 0, nxt < len(xs)
        prev_x = np.where(has_prev, xs[np.clip(nxt - 1, 0, None)], -np.inf)
        next_x = np.where(has_next, xs[np.clip(nxt, None, len(xs) - 1)], np.inf)
        interpolated = next_x - prev_x <= 2 * gap_s
        hold_prev = ~interpolated & (xt - prev_x <= gap_s) & (xt - prev_x <= next_x - xt)
        hold_next = ~interpolated & ~hold_prev & (next_x - xt <= gap_s)
        values[hold_prev] = ys[np.clip(nxt - 1, 0, None)][hold_prev]
        values[hold_next] = ys[np.clip(nxt, None, len(xs) - 1)][hold_next]
        values[~(interpolated | hold_prev | hold_next)] = np.nan
        if column in RADIATION_COLUMNS:
            values = np.clip(values, 0.0, None)
        out[column] = values
    return pd.DataFrame(out, index=times)


def slots_with_weather(frame: pd.DataFrame | None, n_slots: int) -> NDArray[np.bool_]:
    """(T,) True where ``frame`` (weather on the slot midpoints) has every :data:`REQUIRED_COLUMNS` value;
    all False without a frame or when its length is not ``n_slots``."""
    if frame is None or len(frame) != n_slots or any(c not in frame for c in REQUIRED_COLUMNS):
        return np.zeros(n_slots, dtype=bool)
    values = frame[list(REQUIRED_COLUMNS)].to_numpy(dtype=float)
    return np.asarray(np.isfinite(values).all(axis=1), dtype=bool)
