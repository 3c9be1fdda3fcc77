"""Parsing Open-Meteo responses and recorded files; resampling to the 15-min grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from gridcharge.forecasting.adapters.weather import read_recorded_weather
from gridcharge.forecasting.core.weather import (
    WeatherFormatError,
    parse_open_meteo,
    resample_to,
    slot_midpoints,
    slot_starts,
)

DATA = Path(__file__).parent / "data"

HOURLY: dict[str, Any] = {
    "latitude": 52.52, "longitude": 13.41, "utc_offset_seconds": 0,
    "hourly_units": {"wind_speed_10m": "km/h"},
    "hourly": {
        "time": ["2026-06-01T10:00", "2026-06-01T11:00", "2026-06-01T12:00"],
        "shortwave_radiation": [400.0, 600.0, None],
        "temperature_2m": [15.0, 17.0, 19.0],
        "wind_speed_10m": [36.0, 18.0, 0.0],
    },
}


def test_hourly_radiation_is_restamped_at_interval_centre_and_wind_converted() -> None:
    w = parse_open_meteo(HOURLY)
    assert w.resolution == "hourly"
    ghi = w.frame["ghi_w_m2"].dropna()
    assert list(ghi.index.strftime("%H:%M")) == ["09:30", "10:30"]  # 10:00 value = mean of 09:00–10:00
    temp = w.frame["temp_air_c"].dropna()
    assert list(temp.index.strftime("%H:%M")) == ["10:00", "11:00", "12:00"]
    assert np.allclose(w.frame["wind_speed_m_s"].dropna().to_numpy(), [10.0, 5.0, 0.0])


def test_resample_interpolates_and_marks_far_gaps_nan() -> None:
    w = parse_open_meteo(HOURLY)
    times = pd.DatetimeIndex(["2026-06-01T10:00Z", "2026-06-01T10:30Z", "2026-06-01T20:00Z"])
    frame = resample_to(w, times)
    assert frame["ghi_w_m2"].iloc[0] == pytest.approx(500.0)
    assert frame["ghi_w_m2"].iloc[1] == pytest.approx(600.0)
    assert np.isnan(frame["temp_air_c"].iloc[2])


def test_minutely_15_preferred_for_radiation(recorded_forecast: dict) -> None:
    w = parse_open_meteo(recorded_forecast)
    assert w.resolution == "minutely_15"
    step = w.frame["ghi_w_m2"].dropna().index.to_series().diff().dropna().min()
    assert step == pd.Timedelta(minutes=15)
    assert {"cloud_cover_pct", "wind_speed_m_s"} <= set(w.frame.columns)  # from the hourly block


def test_bad_payloads_raise_format_error() -> None:
    with pytest.raises(WeatherFormatError):
        parse_open_meteo({"latitude": 1, "longitude": 2})
    with pytest.raises(WeatherFormatError, match="UTC"):
        parse_open_meteo({**HOURLY, "utc_offset_seconds": 3600})
    with pytest.raises(WeatherFormatError):
        parse_open_meteo({**HOURLY, "hourly": {**HOURLY["hourly"], "temperature_2m": [1.0]}})


def test_read_recorded_json_and_open_meteo_csv_export(tmp_path: Path) -> None:
    js = read_recorded_weather(DATA / "open_meteo_forecast.json")
    assert len(js.frame) > 0 and js.latitude == 48.0
    csv = tmp_path / "export.csv"
    csv.write_text(
        "latitude,longitude,elevation,utc_offset_seconds,timezone,timezone_abbreviation\n"
        "52.52,13.419998,38.0,0,GMT,GMT\n\n"
        "time,temperature_2m (°C),shortwave_radiation (W/m²),wind_speed_10m (km/h)\n"
        "2026-06-01T10:00,15.0,400.0,36.0\n2026-06-01T11:00,17.0,600.0,18.0\n",
        encoding="utf-8",
    )
    w = read_recorded_weather(csv)
    assert w.latitude == 52.52 and w.resolution == "hourly"
    assert np.allclose(w.frame["wind_speed_m_s"].dropna(), [10.0, 5.0])
    plain = tmp_path / "plain.csv"
    plain.write_text("time,shortwave_radiation,temperature_2m\n2026-06-01T10:00,100,10\n2026-06-01T10:15,120,10\n")
    p = read_recorded_weather(plain, latitude=48.0, longitude=7.85)
    assert p.resolution == "minutely_15" and p.longitude == 7.85


def test_slot_grid() -> None:
    starts = slot_starts(pd.Timestamp("2026-06-01T10:07:13Z"), 48)
    assert len(starts) == 192 and starts[0] == pd.Timestamp("2026-06-01T10:00Z")
    assert slot_midpoints(starts)[0] == pd.Timestamp("2026-06-01T10:07:30Z")
    assert json.dumps([str(starts[-1])])
