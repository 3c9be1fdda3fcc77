"""Base-load (non-EV load) forecast per node from its measured history.

Profile, in the site's local time (load follows local clocks and DST):

- ``weekly``: median and upper quantile per (weekday, 15-min slot) over the last ``weeks`` weeks, used
  when the history spans at least 7 days; weekly slots with no sample use the daily profile;
- ``daily``: the same per 15-min slot of the day, when the history spans less than 7 days but ≥ 1 day;
- ``constant``: median/quantile of all samples, for less than a day of history;
- ``empty``: no history at all → ``empty_fallback_w`` for both values, flagged.

The upper value is the larger of the per-slot quantile and ``median × (1 + q)``, q being the same quantile
of all samples' relative deviation from their slot median (pooled: a few weeks give only a few samples
per slot). The latest measurement anchors the first slots: ``forecast = profile + (measured − profile_then)·e^(−Δt/τ)``,
so slot 0 ≈ the measured value, decaying to the profile with time constant ``anchor_tau_h``; the profile
then rests on the bins before the anchor's own 15-min bin (a step counts once). The upper
value (``quantile``, default P90) gets the same offset and is never below the expected value nor below
``expected·(1 + margin_frac)`` when the profile rests on fewer than ``min_samples`` samples per slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
SLOTS_PER_DAY = 96


@dataclass(frozen=True)
class BaseLoadOptions:
    """Forecast settings. Powers W, times h."""

    weeks: int = 4
    quantile: float = 0.9
    anchor_tau_h: float = 2.0
    anchor_max_age: timedelta = timedelta(hours=1)
    margin_frac: float = 0.1
    min_samples: int = 3
    empty_fallback_w: float = 0.0
    timezone: str = "UTC"


@dataclass(frozen=True)
class BaseLoadForecast:
    """Per-slot expected and upper (conservative) base load in W on ``slot_starts``.

    ``method``: weekly / daily / constant / empty; ``anchored``: the latest measurement was blended in.
    """

    slot_starts: pd.DatetimeIndex
    expected_w: FloatArray
    upper_w: FloatArray
    method: str
    anchored: bool
    history_end: pd.Timestamp | None


def _slot_keys(index: pd.DatetimeIndex, tz: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    local = index.tz_convert(tz)
    day_slot = np.asarray(local.hour * 4 + local.minute // 15, dtype=np.int64)
    week_slot = np.asarray(local.day_of_week, dtype=np.int64) * SLOTS_PER_DAY + day_slot
    return week_slot, day_slot


def _profile(
    values: FloatArray, keys: NDArray[np.int64], size: int, q: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Median, quantile and sample count per key (NaN where no sample)."""
    frame = pd.DataFrame({"k": keys, "v": values})
    grouped = frame.groupby("k")["v"]
    med = np.full(size, np.nan)
    upper = np.full(size, np.nan)
    count = np.zeros(size)
    median_s = grouped.median()
    quant_s = grouped.quantile(q)
    count_s = grouped.count()
    med[median_s.index.to_numpy()] = median_s.to_numpy()
    upper[quant_s.index.to_numpy()] = quant_s.to_numpy()
    count[count_s.index.to_numpy()] = count_s.to_numpy()
    return med, upper, count


def forecast_base_load(
    history_w: pd.Series,
    slot_starts: pd.DatetimeIndex,
    now: datetime | pd.Timestamp,
    options: BaseLoadOptions | None = None,
) -> BaseLoadForecast:
    """Forecast the base load on ``slot_starts`` (UTC) from ``history_w`` (W, UTC DatetimeIndex, any
    spacing; resampled to 15-min means) using only samples at or before ``now``."""
    opts = options or BaseLoadOptions()
    now_ts = pd.Timestamp(now)
    now_ts = now_ts.tz_localize("UTC") if now_ts.tzinfo is None else now_ts.tz_convert("UTC")
    slots = pd.DatetimeIndex(slot_starts)
    n = len(slots)
    hist = history_w.dropna()
    if len(hist):
        index = pd.DatetimeIndex(hist.index)
        hist.index = index.tz_convert("UTC") if index.tz is not None else index.tz_localize("UTC")
        hist = hist[(hist.index <= now_ts) & (hist.index > now_ts - pd.Timedelta(weeks=opts.weeks))]
    if len(hist) == 0:
        fallback = np.full(n, float(opts.empty_fallback_w))
        return BaseLoadForecast(slots, fallback, fallback.copy(), "empty", False, None)

    binned = hist.astype(float).resample("15min").mean().dropna()
    last_t = pd.Timestamp(hist.index[-1])
    anchored = now_ts - last_t <= pd.Timedelta(opts.anchor_max_age)
    if anchored and len(binned) > 1:
        # the anchor carries the latest level; the profile and its spread come from the bins before the
        # anchor's own, or a step in the base load would count twice in the upper value (once in a P90 that
        # the new level inflates, once as the anchor's offset): a 30 % step gave an upper value 60 % up
        binned = binned[binned.index < last_t.floor("15min")]
    values = binned.to_numpy(dtype=float)
    week_keys, day_keys = _slot_keys(pd.DatetimeIndex(binned.index), opts.timezone)
    span = binned.index[-1] - binned.index[0] + pd.Timedelta(minutes=15)

    d_med, d_up, d_cnt = _profile(values, day_keys, SLOTS_PER_DAY, opts.quantile)
    all_med = float(np.median(values))
    all_up = float(np.quantile(values, opts.quantile))

    def fill(a: FloatArray, default: float) -> FloatArray:
        return np.where(np.isfinite(a), a, default)

    if span >= pd.Timedelta(days=7):
        method = "weekly"
        w_med, w_up, w_cnt = _profile(values, week_keys, 7 * SLOTS_PER_DAY, opts.quantile)
    elif span >= pd.Timedelta(days=1):
        method = "daily"
    else:
        method = "constant"

    def profile_at(index: pd.DatetimeIndex) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(median W, upper W, sample count) of the chosen profile at ``index``."""
        wk, dk = _slot_keys(index, opts.timezone)
        if method == "weekly":
            med = np.where(np.isfinite(w_med[wk]), w_med[wk], d_med[dk])
            up = np.where(np.isfinite(w_up[wk]), w_up[wk], d_up[dk])
            cnt = np.where(w_cnt[wk] > 0, w_cnt[wk], d_cnt[dk])
            return fill(med, all_med), fill(up, all_up), cnt
        if method == "daily":
            return fill(d_med[dk], all_med), fill(d_up[dk], all_up), d_cnt[dk]
        size = len(index)
        return np.full(size, all_med), np.full(size, all_up), np.full(size, float(len(values)))

    expected, upper, counts = profile_at(slots)
    # A per-slot quantile of a few weeks rests on ~4 samples and underestimates the spread; pool the
    # relative residuals of every sample around its slot median for a more robust upper value.
    hist_med = profile_at(pd.DatetimeIndex(binned.index))[0]
    ok = np.abs(hist_med) > 1e-9
    if ok.sum() >= 20:
        rel_q = float(np.quantile(values[ok] / hist_med[ok] - 1.0, opts.quantile))
        upper = np.maximum(upper, expected * (1.0 + max(rel_q, 0.0)))

    # Anchor on the latest raw measurement if it is recent enough.
    if anchored:
        offset = float(hist.iloc[-1]) - float(profile_at(pd.DatetimeIndex([last_t]))[0][0])
        dt_h = (slots - last_t).total_seconds().to_numpy() / 3600.0
        decay = np.exp(-np.clip(dt_h, 0.0, None) / max(opts.anchor_tau_h, 1e-9))
        expected = expected + offset * decay
        upper = upper + offset * decay

    thin = counts < opts.min_samples
    upper = np.where(thin, np.maximum(upper, expected * (1.0 + opts.margin_frac)), upper)
    upper = np.maximum(upper, expected)
    return BaseLoadForecast(slots, expected, upper, method, bool(anchored), last_t)
