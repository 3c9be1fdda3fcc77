"""Base-load forecast: weekly/daily/constant/empty profiles, anchoring, upper quantile."""

from __future__ import annotations

import numpy as np
import pandas as pd
from gridcharge.forecasting.core.base_load import BaseLoadOptions, forecast_base_load
from gridcharge.forecasting.core.weather import slot_starts

NOW = pd.Timestamp("2026-06-10T12:00Z")  # a Wednesday


def _history(days: float, weekday_w: float = 10_000.0, weekend_w: float = 2_000.0, noise: float = 0.0) -> pd.Series:
    idx = pd.date_range(NOW - pd.Timedelta(days=days), NOW, freq="15min", inclusive="left")
    base = np.where(idx.day_of_week < 5, weekday_w, weekend_w) * np.where((idx.hour >= 8) & (idx.hour < 18), 1.0, 0.3)
    rng = np.random.default_rng(0)
    return pd.Series(base * (1 + noise * rng.standard_normal(len(idx))), index=idx)


def test_weekly_profile_reproduces_weekday_and_weekend() -> None:
    slots = slot_starts(NOW, 96)
    fc = forecast_base_load(_history(28), slots, NOW, BaseLoadOptions(anchor_max_age=pd.Timedelta(0)))
    assert fc.method == "weekly" and not fc.anchored
    sat_noon = slots.get_loc(pd.Timestamp("2026-06-13T12:00Z"))
    thu_noon = slots.get_loc(pd.Timestamp("2026-06-11T12:00Z"))
    thu_night = slots.get_loc(pd.Timestamp("2026-06-11T02:00Z"))
    assert fc.expected_w[thu_noon] == 10_000.0
    assert fc.expected_w[sat_noon] == 2_000.0
    assert fc.expected_w[thu_night] == 3_000.0


def test_upper_quantile_above_median_with_noise() -> None:
    slots = slot_starts(NOW, 48)
    fc = forecast_base_load(_history(28, noise=0.1), slots, NOW)
    assert np.all(fc.upper_w >= fc.expected_w)
    assert np.mean(fc.upper_w - fc.expected_w) > 0.03 * np.mean(fc.expected_w)


def test_short_history_falls_back_to_daily_then_constant_then_empty() -> None:
    slots = slot_starts(NOW, 48)
    assert forecast_base_load(_history(3), slots, NOW).method == "daily"
    const = forecast_base_load(_history(0.25), slots, NOW)
    assert const.method == "constant"
    empty = forecast_base_load(pd.Series(dtype=float), slots, NOW, BaseLoadOptions(empty_fallback_w=5_000))
    assert empty.method == "empty" and np.all(empty.upper_w == 5_000) and not empty.anchored


def test_latest_measurement_anchors_then_decays_to_profile() -> None:
    hist = _history(28)
    hist.iloc[-1] = 25_000.0  # a spike right now (profile says 10 kW at noon)
    slots = slot_starts(NOW, 48)
    fc = forecast_base_load(hist, slots, NOW, BaseLoadOptions(anchor_tau_h=1.0))
    assert fc.anchored
    # last sample at 11:45, first slot at 12:00: offset 15 kW decayed by e^(-0.25 h / 1 h)
    assert abs(fc.expected_w[0] - (10_000.0 + 15_000.0 * np.exp(-0.25))) < 1.0
    after_4h = slots.get_loc(NOW + pd.Timedelta(hours=4))
    assert fc.expected_w[after_4h] < 10_000.0 + 15_000.0 * np.exp(-3.5) + 1.0
    assert fc.expected_w[after_4h] > 10_000.0
    assert fc.upper_w[0] >= fc.expected_w[0]


def test_stale_latest_measurement_is_not_used() -> None:
    hist = _history(28)
    hist = hist[hist.index < NOW - pd.Timedelta(hours=3)]
    fc = forecast_base_load(hist, slot_starts(NOW, 4), NOW)
    assert not fc.anchored


def test_profile_is_in_site_local_time() -> None:
    idx = pd.date_range(NOW - pd.Timedelta(days=14), NOW, freq="15min", inclusive="left")
    local = idx.tz_convert("Europe/Berlin")
    hist = pd.Series(np.where(local.hour == 9, 1000.0, 0.0), index=idx)
    slots = slot_starts(NOW, 24)
    fc = forecast_base_load(hist, slots, NOW, BaseLoadOptions(timezone="Europe/Berlin"))
    nine_local = slots.get_loc(pd.Timestamp("2026-06-11T07:00Z"))  # 09:00 CEST
    assert fc.expected_w[nine_local] == 1000.0


def test_a_step_in_the_base_load_counts_once_in_the_upper_value() -> None:
    """An hour of flat 18.4 kW, then 15 min at 46 kW (a 30 %-of-limit step): the forecast starts at the new
    level, and the upper value adds the normal spread, not the step a second time (it used to be P90 of the
    bins including the new one + the anchor's offset: ≈ 73 kW, starving the cars for two hours)."""
    idx = pd.date_range(NOW - pd.Timedelta(minutes=75), NOW, freq="1min", inclusive="left")
    hist = pd.Series(np.where(idx >= NOW - pd.Timedelta(minutes=15), 46_000.0, 18_400.0), index=idx)
    slots = slot_starts(NOW, 8)
    fc = forecast_base_load(hist, slots, NOW, BaseLoadOptions(margin_frac=0.1))
    assert fc.method == "constant" and fc.anchored
    assert abs(fc.expected_w[0] - (18_400.0 + 27_600.0 * np.exp(-1 / 60 / 2.0))) < 50.0
    assert fc.upper_w[0] <= 1.1 * fc.expected_w[0] + 1.0
    assert fc.upper_w[0] >= fc.expected_w[0]
