"""`gridcharge forecast backtest`: score the PV and base-load forecasts against recorded actuals.

PV: the forecast chain runs on the recorded weather (hourly, interpolated to 15-min slot midpoints) and is
compared per 15-min slot with the measured AC power. Base load: a day-ahead forecast is issued every day
at 00:00 UTC from the history before it and compared with what followed. Scores:

- RMSE and MAE as % of rated power (PV: kWp; base load: the peak of the recorded load, as no node rating
  is known here), over all slots including night (PV daytime-only RMSE also shown);
- skill vs 24-h persistence = 1 − RMSE / RMSE_persistence (persistence: the value 24 h earlier);
- base load: how often the actual stayed below the conservative (upper, P90) value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from gridcharge.forecasting.adapters.weather import read_recorded_weather
from gridcharge.forecasting.core.base_load import BaseLoadOptions, forecast_base_load
from gridcharge.forecasting.core.pv import PVFleet, WeatherGrid, forecast_pv
from gridcharge.forecasting.core.weather import resample_to, slot_midpoints

DEFAULT_DATA = Path(__file__).parent / "data" / "backtest"


@dataclass(frozen=True)
class Score:
    """Errors of one forecast vs actuals. RMSE/MAE in % of ``rated_w``; skill vs persistence (1 = perfect)."""

    name: str
    slots: int
    rated_w: float
    rmse_pct: float
    mae_pct: float
    bias_pct: float
    persistence_rmse_pct: float
    skill: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BacktestReport:
    scores: list[Score]
    notes: list[str]

    def format(self) -> str:
        """Text table."""
        head = f"{'forecast':<34}{'slots':>7}{'RMSE %':>9}{'MAE %':>8}{'bias %':>8}{'persist. RMSE %':>17}{'skill':>8}"
        lines = [head, "-" * len(head)]
        for s in self.scores:
            lines.append(
                f"{s.name:<34}{s.slots:>7}{s.rmse_pct:>9.2f}{s.mae_pct:>8.2f}{s.bias_pct:>8.2f}"
                f"{s.persistence_rmse_pct:>17.2f}{s.skill:>8.2f}"
            )
            for key, value in s.extra.items():
                lines.append(f"    {key}: {value:.2f}")
        lines += ["", *self.notes]
        return "\n".join(lines)


def _score(
    name: str,
    forecast: np.ndarray,
    actual: np.ndarray,
    persistence: np.ndarray,
    rated_w: float,
    extra: dict[str, float] | None = None,
) -> Score:
    err = forecast - actual
    rmse = float(np.sqrt(np.mean(err**2)))
    rmse_p = float(np.sqrt(np.mean((persistence - actual) ** 2)))
    return Score(
        name=name,
        slots=len(actual),
        rated_w=rated_w,
        rmse_pct=100 * rmse / rated_w,
        mae_pct=100 * float(np.mean(np.abs(err))) / rated_w,
        bias_pct=100 * float(np.mean(err)) / rated_w,
        persistence_rmse_pct=100 * rmse_p / rated_w,
        skill=1.0 - rmse / rmse_p if rmse_p > 0 else float("nan"),
        extra=extra or {},
    )


def _read_series(path: Path) -> pd.Series:
    frame = pd.read_csv(path)
    index = pd.DatetimeIndex(pd.to_datetime(frame.iloc[:, 0], utc=True))
    return pd.Series(frame.iloc[:, 1].to_numpy(dtype=float), index=index)


def score_pv(weather_path: Path, pv_actual_path: Path, pv_system: dict[str, float | str], label: str) -> Score:
    """PV forecast from the recorded weather vs measured AC W (15-min, stamped at slot start)."""
    actual = _read_series(pv_actual_path)
    weather = read_recorded_weather(weather_path)
    starts = pd.DatetimeIndex(actual.index)
    frame = resample_to(weather, slot_midpoints(starts))
    fleet = PVFleet.from_records([{**pv_system, "latitude": weather.latitude, "longitude": weather.longitude}])
    fc = forecast_pv(fleet, slot_midpoints(starts), WeatherGrid.from_frame(frame)).ac_w[0]
    step = starts[1] - starts[0]
    lag = int(pd.Timedelta(hours=24) / step)
    a = actual.to_numpy()
    rated = float(fleet.kwp[0]) * 1000.0
    day = a[lag:] > 0.01 * rated
    extra = {
        "daytime RMSE % of kWp": 100 * float(np.sqrt(np.mean((fc[lag:][day] - a[lag:][day]) ** 2))) / rated,
        "energy forecast / actual": float(fc[lag:].sum() / max(a[lag:].sum(), 1e-9)),
    }
    return _score(label, fc[lag:], a[lag:], a[:-lag], rated, extra)


def score_base_load(load_path: Path, timezone: str, horizon_h: float = 24.0, min_history_days: int = 28) -> Score:
    """Day-ahead base-load forecasts issued daily at 00:00 UTC once ``min_history_days`` of history exist."""
    load = _read_series(load_path)
    step = load.index[1] - load.index[0]
    per_day = int(pd.Timedelta(hours=24) / step)
    first = load.index[0].normalize() + pd.Timedelta(days=min_history_days)
    origins = pd.date_range(first, load.index[-1] - pd.Timedelta(hours=horizon_h) + step, freq="1D")
    fc_all, up_all, act_all, pers_all = [], [], [], []
    opts = BaseLoadOptions(timezone=timezone)
    for origin in origins:
        slots = pd.date_range(origin, periods=int(pd.Timedelta(hours=horizon_h) / step), freq=step)
        fc = forecast_base_load(load[load.index < origin], slots, origin, opts)
        actual = load.reindex(slots).to_numpy()
        persistence = load.reindex(slots - pd.Timedelta(hours=24)).to_numpy()
        ok = np.isfinite(actual) & np.isfinite(persistence)
        fc_all.append(fc.expected_w[ok])
        up_all.append(fc.upper_w[ok])
        act_all.append(actual[ok])
        pers_all.append(persistence[ok])
    if not origins.size:
        raise ValueError(f"{load_path}: need more than {min_history_days} days of load history")
    f, u, a, p = (np.concatenate(x) for x in (fc_all, up_all, act_all, pers_all))
    rated = float(load.max())
    extra = {
        "actual ≤ upper (P90) value, % of slots": 100 * float(np.mean(a <= u)),
        "upper-value RMSE % of peak": 100 * float(np.sqrt(np.mean((u - a) ** 2))) / rated,
        "forecast origins": float(len(origins)),
    }
    _ = per_day
    return _score("base load (day-ahead, median)", f, a, p, rated, extra)


def run_backtest(
    weather_actual_path: str | Path | None = None,
    pv_actual_path: str | Path | None = None,
    load_history_path: str | Path | None = None,
    *,
    weather_forecast_path: str | Path | None = None,
    pv_system: dict[str, float | str] | None = None,
    timezone: str | None = None,
    data_dir: str | Path | None = None,
) -> BacktestReport:
    """Score PV (with the recorded actual weather, and with a recorded forecast if given) and base load.

    With no paths, uses the shipped synthetic sample in ``data/backtest`` (or ``data_dir``), whose
    ``site.json`` gives the PV system and timezone.
    """
    directory = Path(data_dir) if data_dir is not None else DEFAULT_DATA
    site: dict[str, object] = {}
    if (directory / "site.json").exists():
        site = json.loads((directory / "site.json").read_text(encoding="utf-8"))
    if weather_actual_path is None and pv_actual_path is None and load_history_path is None:
        weather_actual_path = directory / "weather_actual.json"
        pv_actual_path = directory / "pv_actual.csv"
        load_history_path = directory / "load_history.csv"
        if weather_forecast_path is None and (directory / "weather_forecast.json").exists():
            weather_forecast_path = directory / "weather_forecast.json"
    system = pv_system or site.get("pv_system")
    tz = timezone or str(site.get("timezone", "UTC"))
    scores: list[Score] = []
    notes: list[str] = []
    if pv_actual_path is not None:
        if not isinstance(system, dict):
            raise ValueError("PV backtest needs pv_system (id, kwp, tilt_deg, azimuth_deg[, losses_pct])")
        if weather_actual_path is not None:
            scores.append(
                score_pv(Path(weather_actual_path), Path(pv_actual_path), system, "PV, recorded actual weather")
            )
        if weather_forecast_path is not None:
            scores.append(
                score_pv(Path(weather_forecast_path), Path(pv_actual_path), system, "PV, recorded weather forecast")
            )
    if load_history_path is not None:
        scores.append(score_base_load(Path(load_history_path), tz))
    notes.append("Persistence = the actual value 24 h earlier; skill = 1 − RMSE / RMSE_persistence.")
    notes.append("PV RMSE in % of kWp over all 15-min slots incl. night; base load in % of the recorded peak.")
    if directory == DEFAULT_DATA and Path(str(pv_actual_path)).parent == DEFAULT_DATA:
        notes.append("Data: the shipped SYNTHETIC sample (data/backtest/README.md), not measurements.")
    return BacktestReport(scores, notes)
