"""Synthetic-but-realistic weather, PV and load series (for tests, the backtest data set and the benchmark).

Not measured data: irradiance is pvlib's Ineichen clear sky (climatological Linke turbidity) times a
smooth random clear-sky index; temperature and wind follow daily cycles with noise; base load is an
office/depot-like weekday/weekend profile with noise. Deterministic for a given seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pvlib
from gridcharge.forecasting.core.pv import ETA_INV_NOM, SAPM_CLOSE_MOUNT


def clear_sky_index(times: pd.DatetimeIndex, seed: int, mean_kc: float = 0.7) -> np.ndarray:
    """Smooth random clear-sky index in [0.05, 1.05] (AR(1) on 15-min steps with day-to-day regimes)."""
    rng = np.random.default_rng(seed)
    n = len(times)
    days = np.asarray((times - times[0]).days, dtype=int)
    regime = rng.uniform(max(mean_kc - 0.45, 0.1), min(mean_kc + 0.35, 1.0), days.max() + 1)[days]
    noise = np.zeros(n)
    for i in range(1, n):
        noise[i] = 0.85 * noise[i - 1] + rng.normal(0.0, 0.12)
    return np.clip(regime + noise, 0.05, 1.05)


def site_weather_15min(
    latitude: float, longitude: float, start: str, days: int, seed: int = 1, altitude_m: float = 300.0
) -> pd.DataFrame:
    """15-min weather (interval means stamped at the interval start + 7.5 min): ghi/dni/dhi W/m²,
    temp_air_c °C, wind_speed_m_s m/s, cloud_cover_pct %."""
    times = pd.date_range(start, periods=days * 96, freq="15min", tz="UTC") + pd.Timedelta(minutes=7.5)
    loc = pvlib.location.Location(latitude, longitude, "UTC", altitude_m)
    cs = loc.get_clearsky(times, model="ineichen")
    kc = clear_sky_index(times, seed)
    ghi = cs["ghi"].to_numpy() * kc
    solpos = loc.get_solarposition(times)
    parts = pvlib.irradiance.erbs(pd.Series(ghi, index=times), solpos["apparent_zenith"], times)
    rng = np.random.default_rng(seed + 1)
    hour = np.asarray(times.hour + times.minute / 60.0)
    day_mean = 12.0 + 4.0 * rng.standard_normal(days)[np.asarray((times - times[0]).days)]
    temp = day_mean + 6.0 * np.sin((hour - 9.0) / 24.0 * 2 * np.pi) + rng.normal(0, 0.3, len(times))
    wind = np.clip(2.5 + 1.5 * np.sin(hour / 24.0 * 2 * np.pi) + rng.normal(0, 0.5, len(times)), 0.2, None)
    return pd.DataFrame(
        {
            "ghi_w_m2": ghi,
            "dni_w_m2": parts["dni"].to_numpy(),
            "dhi_w_m2": parts["dhi"].to_numpy(),
            "temp_air_c": temp,
            "wind_speed_m_s": wind,
            "cloud_cover_pct": np.clip((1.0 - kc) * 110.0, 0, 100),
        },
        index=times,
    )


def open_meteo_payload(weather_15: pd.DataFrame, latitude: float, longitude: float) -> dict[str, Any]:
    """An Open-Meteo ``/v1/forecast`` response (timezone=UTC, wind in m/s) made from 15-min weather:
    hourly radiation = mean of the preceding hour, stamped at the hour's end, like the real API."""
    w = weather_15.copy()
    w.index = w.index - pd.Timedelta(minutes=7.5)  # interval starts
    rad = ["ghi_w_m2", "dni_w_m2", "dhi_w_m2"]
    hourly_rad = w[rad].resample("1h", label="right", closed="left").mean()
    inst = w[["temp_air_c", "wind_speed_m_s", "cloud_cover_pct"]]
    hourly_inst = inst[inst.index.minute == 0]
    hourly = hourly_rad.join(hourly_inst, how="inner")
    q = w.copy()
    q.index = q.index + pd.Timedelta(minutes=15)  # radiation stamped at the end of its interval

    def fmt(idx: pd.DatetimeIndex) -> list[str]:
        return [t.strftime("%Y-%m-%dT%H:%M") for t in idx]

    def r(a: pd.Series) -> list[float]:
        return [round(float(x), 1) for x in a]

    return {
        "latitude": latitude,
        "longitude": longitude,
        "generationtime_ms": 0.5,
        "utc_offset_seconds": 0,
        "timezone": "UTC",
        "timezone_abbreviation": "UTC",
        "elevation": 300.0,
        "hourly_units": {
            "time": "iso8601",
            "temperature_2m": "°C",
            "shortwave_radiation": "W/m²",
            "direct_normal_irradiance": "W/m²",
            "diffuse_radiation": "W/m²",
            "cloud_cover": "%",
            "wind_speed_10m": "m/s",
        },
        "hourly": {
            "time": fmt(pd.DatetimeIndex(hourly.index)),
            "temperature_2m": r(hourly["temp_air_c"]),
            "shortwave_radiation": r(hourly["ghi_w_m2"]),
            "direct_normal_irradiance": r(hourly["dni_w_m2"]),
            "diffuse_radiation": r(hourly["dhi_w_m2"]),
            "cloud_cover": [round(float(x)) for x in hourly["cloud_cover_pct"]],
            "wind_speed_10m": r(hourly["wind_speed_m_s"]),
        },
        "minutely_15_units": {
            "time": "iso8601",
            "shortwave_radiation": "W/m²",
            "direct_normal_irradiance": "W/m²",
            "diffuse_radiation": "W/m²",
            "temperature_2m": "°C",
        },
        "minutely_15": {
            "time": fmt(pd.DatetimeIndex(q.index)),
            "shortwave_radiation": r(q["ghi_w_m2"]),
            "direct_normal_irradiance": r(q["dni_w_m2"]),
            "diffuse_radiation": r(q["dhi_w_m2"]),
            "temperature_2m": r(q["temp_air_c"]),
        },
    }


def pv_actual_w(
    weather_15: pd.DataFrame,
    latitude: float,
    longitude: float,
    kwp: float,
    tilt_deg: float,
    azimuth_deg: float,
    losses_pct: float = 14.0,
    altitude_m: float = 300.0,
    seed: int = 3,
) -> pd.Series:
    """'Measured' AC power W of one system: pvlib ModelChain (PVWatts) on the 15-min weather, plus 2 %
    multiplicative meter/soiling noise."""
    loc = pvlib.location.Location(latitude, longitude, "UTC", altitude_m)
    system = pvlib.pvsystem.PVSystem(
        surface_tilt=tilt_deg,
        surface_azimuth=azimuth_deg,
        module_parameters={"pdc0": kwp * 1000.0, "gamma_pdc": -0.004},
        inverter_parameters={"pdc0": kwp * 1000.0 / ETA_INV_NOM},
        temperature_model_parameters=dict(SAPM_CLOSE_MOUNT),
        losses_parameters=_losses(losses_pct),
    )
    # Perez transposition (ModelChain default): deliberately not the Hay-Davies model the forecast uses.
    mc = pvlib.modelchain.ModelChain.with_pvwatts(system, loc, losses_model="pvwatts")
    frame = weather_15.rename(
        columns={
            "ghi_w_m2": "ghi",
            "dni_w_m2": "dni",
            "dhi_w_m2": "dhi",
            "temp_air_c": "temp_air",
            "wind_speed_m_s": "wind_speed",
        }
    )[["ghi", "dni", "dhi", "temp_air", "wind_speed"]]
    mc.run_model(frame)
    ac = mc.results.ac.fillna(0.0).clip(lower=0.0)
    rng = np.random.default_rng(seed)
    return (ac * (1.0 + rng.normal(0.0, 0.02, len(ac)))).clip(lower=0.0).rename("pv_ac_w")


def _losses(losses_pct: float) -> dict[str, float]:
    """pvwatts_losses parameters whose total is exactly ``losses_pct``."""
    zero = dict.fromkeys(
        ("shading", "snow", "mismatch", "wiring", "connections", "lid", "nameplate_rating", "age", "availability"),
        0.0,
    )
    return {"soiling": losses_pct, **zero}


def base_load_w(start: str, days: int, seed: int = 5, peak_w: float = 40_000.0) -> pd.Series:
    """15-min mean non-EV load W (stamped at interval start) of a depot/office: weekday working-hours
    plateau, lower weekends, night base, 8 % noise and occasional spikes."""
    times = pd.date_range(start, periods=days * 96, freq="15min", tz="UTC")
    local = times.tz_convert("Europe/Berlin")
    hour = np.asarray(local.hour + local.minute / 60.0)
    weekday = np.asarray(local.day_of_week) < 5
    day_shape = 1.0 / (1.0 + np.exp(-(hour - 7.0) * 2)) - 1.0 / (1.0 + np.exp(-(hour - 18.0) * 2))
    level = np.where(weekday, 0.25 + 0.65 * day_shape, 0.25 + 0.15 * day_shape)
    rng = np.random.default_rng(seed)
    noise = 1.0 + rng.normal(0.0, 0.08, len(times))
    spikes = (rng.random(len(times)) < 0.01) * rng.uniform(0.1, 0.3, len(times))
    return pd.Series(peak_w * (level * noise + spikes), index=times, name="base_load_w")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


BACKTEST_SITE = {
    "name": "synthetic depot near Freiburg",
    "latitude": 48.0,
    "longitude": 7.85,
    "altitude_m": 300.0,
    "timezone": "Europe/Berlin",
    "pv_system": {"id": "roof", "kwp": 50.0, "tilt_deg": 25.0, "azimuth_deg": 190.0, "losses_pct": 14.0},
}


def write_backtest_dataset(directory: Path, start: str = "2026-06-01", pv_days: int = 7, load_days: int = 35) -> None:
    """Write the offline backtest sample: ``weather_actual.json`` (hourly, Open-Meteo shape),
    ``weather_forecast.json`` (a degraded 'NWP-like' forecast of the same days), ``pv_actual.csv``
    (15-min AC W), ``load_history.csv`` (15-min base load W) and ``site.json`` (site + PV system)."""
    directory.mkdir(parents=True, exist_ok=True)
    lat, lon, alt = BACKTEST_SITE["latitude"], BACKTEST_SITE["longitude"], BACKTEST_SITE["altitude_m"]
    assert isinstance(lat, float) and isinstance(lon, float) and isinstance(alt, float)
    actual = site_weather_15min(lat, lon, start, pv_days, seed=21, altitude_m=alt)
    # Forecast: clear-sky index blended with an unrelated one and smoothed over 3 h, temperature biased.
    other = site_weather_15min(lat, lon, start, pv_days, seed=99, altitude_m=alt)
    forecast = actual.copy()
    blend = 0.65 * actual["ghi_w_m2"] + 0.35 * other["ghi_w_m2"]
    forecast["ghi_w_m2"] = blend.rolling(12, center=True, min_periods=1).mean()
    forecast["temp_air_c"] = actual["temp_air_c"] + 1.0
    loc = pvlib.location.Location(lat, lon, "UTC", alt)
    solpos = loc.get_solarposition(forecast.index)
    parts = pvlib.irradiance.erbs(forecast["ghi_w_m2"], solpos["apparent_zenith"], forecast.index)
    forecast["dni_w_m2"], forecast["dhi_w_m2"] = parts["dni"], parts["dhi"]
    for name, frame in (("weather_actual.json", actual), ("weather_forecast.json", forecast)):
        payload = open_meteo_payload(frame, lat, lon)
        del payload["minutely_15"], payload["minutely_15_units"]  # archives are hourly
        write_json(directory / name, payload)
    pv = BACKTEST_SITE["pv_system"]
    assert isinstance(pv, dict)
    ac = pv_actual_w(actual, lat, lon, pv["kwp"], pv["tilt_deg"], pv["azimuth_deg"], pv["losses_pct"], alt)
    ac.index = ac.index - pd.Timedelta(minutes=7.5)  # stamp at slot start
    ac.round(1).to_frame().to_csv(directory / "pv_actual.csv", index_label="time", date_format="%Y-%m-%dT%H:%MZ")
    load_start = (pd.Timestamp(start) - pd.Timedelta(days=load_days - pv_days)).strftime("%Y-%m-%d")
    load = base_load_w(load_start, load_days)
    load.round(1).to_frame().to_csv(directory / "load_history.csv", index_label="time", date_format="%Y-%m-%dT%H:%MZ")
    (directory / "site.json").write_text(json.dumps(BACKTEST_SITE, indent=2) + "\n", encoding="utf-8")
    (directory / "README.md").write_text(
        "Synthetic backtest sample (NOT measured data), written by "
        "`gridcharge.forecasting.synthetic.write_backtest_dataset`.\n\n"
        "- weather_actual.json: hourly Open-Meteo-shaped 'observed' weather: Ineichen clear sky × a random\n"
        "  clear-sky index, daily temperature cycle, wind.\n"
        "- weather_forecast.json: a degraded forecast of the same days (clear-sky index blended 65/35 with an\n"
        "  unrelated one, 3 h smoothing, +1 °C bias).\n"
        "- pv_actual.csv: 15-min AC W of the PV system in site.json from pvlib ModelChain (PVWatts, Perez\n"
        "  transposition) on the 15-min 'observed' weather, ×(1 + 2 % noise).\n"
        "- load_history.csv: 15-min non-EV load W of a depot/office (weekday/weekend profile, noise, spikes).\n",
        encoding="utf-8",
    )
