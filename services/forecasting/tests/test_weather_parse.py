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
    slots_with_weather,
)

DATA = Path(__file__).parent / "data"

HOURLY: dict[str, Any] = {
    "latitude": 52.52,
    "longitude": 13.41,
    "utc_offset_seconds": 0,
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


def _quarter_hourly(start: str, hours: int, ghi: float = 500.0, temp: float = 20.0) -> dict[str, Any]:
    times = pd.date_range(start, periods=hours * 4, freq="15min")
    return {
        "time": [t.strftime("%Y-%m-%dT%H:%M") for t in times],
        "shortwave_radiation": [ghi] * len(times),
        "temperature_2m": [temp] * len(times),
    }


def test_short_gap_is_interpolated_long_gap_is_missing_beyond_an_hour() -> None:
    block = _quarter_hourly("2026-06-01T00:15", 24)
    t = block["time"]
    for i in (t.index("2026-06-01T06:00"), t.index("2026-06-01T06:15")):  # 30 min: interpolated
        block["shortwave_radiation"][i] = block["temperature_2m"][i] = None
    long_gap = range(t.index("2026-06-01T10:00"), t.index("2026-06-01T15:00") + 1)  # 5 h of nulls
    for i in long_gap:
        block["shortwave_radiation"][i] = block["temperature_2m"][i] = None
    w = parse_open_meteo({"latitude": 48.0, "longitude": 7.85, "utc_offset_seconds": 0, "minutely_15": block})
    mids = slot_midpoints(slot_starts(pd.Timestamp("2026-06-01T04:00Z"), 14))
    frame = resample_to(w, mids).set_index(mids.strftime("%H:%M"))
    assert frame.loc["05:52", "ghi_w_m2"] == pytest.approx(500.0) and frame.loc["06:07", "temp_air_c"] == 20.0
    # the last value before the gap (09:45) is carried one hour, the first after it (15:15) an hour back
    assert np.isfinite(frame.loc[["09:52", "10:37", "14:22", "15:07"], "temp_air_c"]).all()
    assert frame.loc[["10:52", "12:07", "14:07"], "temp_air_c"].isna().all()
    assert frame.loc[["10:52", "12:07", "13:52"], "ghi_w_m2"].isna().all()  # radiation: 15:15 = 15:00–15:15
    assert frame.loc["14:07", "ghi_w_m2"] == 500.0
    frame = frame.set_index(mids)
    missing = ~slots_with_weather(frame, len(mids))
    assert missing.sum() == 14  # 10:45 … 14:00 starts: more than an hour from any value
    assert not slots_with_weather(None, 4).any()


def test_hourly_values_fill_where_the_15_min_block_has_none() -> None:
    """Open-Meteo's 15-min data can end (nulls) before the hourly data: the hourly values are used there."""
    quarter = _quarter_hourly("2026-06-01T00:15", 48, ghi=300.0)
    end = quarter["time"].index("2026-06-01T23:45")
    for key in ("shortwave_radiation", "temperature_2m"):
        quarter[key] = [v if i <= end else None for i, v in enumerate(quarter[key])]
    hours = pd.date_range("2026-06-01T01:00", periods=48, freq="1h")
    hourly = {
        "time": [t.strftime("%Y-%m-%dT%H:%M") for t in hours],
        "shortwave_radiation": [700.0] * 48,
        "temperature_2m": [25.0] * 48,
    }
    w = parse_open_meteo(
        {"latitude": 48.0, "longitude": 7.85, "utc_offset_seconds": 0, "hourly": hourly, "minutely_15": quarter}
    )
    assert w.resolution == "minutely_15"
    ghi = w.frame["ghi_w_m2"].dropna()
    assert (ghi[:"2026-06-01T23:40Z"] == 300.0).all()  # the 15-min values where they exist
    assert (ghi["2026-06-02T00:10Z":] == 700.0).all()  # the hourly ones after they end
    assert ghi["2026-06-02T00:10Z":].index[0] == pd.Timestamp("2026-06-02T00:30Z")
    mids = slot_midpoints(slot_starts(pd.Timestamp("2026-06-01T12:00Z"), 30))
    assert slots_with_weather(resample_to(w, mids), len(mids)).all()
