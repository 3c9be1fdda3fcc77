"""Dynamic transformer rating (IEC 60076-7 steady-state hot-spot model)."""

from __future__ import annotations

import numpy as np
from gridcharge.forecasting.core.rating import RatingParams, allowed_loading_factor, hot_spot_c, rating_factor
from hypothesis import given, settings
from hypothesis import strategies as st


def test_defaults_give_unity_at_20c() -> None:
    assert abs(float(allowed_loading_factor(20.0, RatingParams(k_max=2.0))) - 1.0) < 1e-9
    assert abs(float(hot_spot_c(1.0, 20.0, RatingParams())) - 98.0) < 1e-9


def test_hotter_is_lower_and_capped_at_nameplate_by_default() -> None:
    ambient = np.array([-20.0, 0.0, 20.0, 25.0, 30.0, 35.0, 40.0])
    k = allowed_loading_factor(ambient)
    assert np.all(np.diff(k) <= 1e-12)
    assert np.all(k <= 1.0)
    assert k[0] == 1.0 and k[-1] < 0.85
    uncapped = allowed_loading_factor(ambient, RatingParams(k_max=1.5))
    assert uncapped[0] > 1.2 and uncapped[0] <= 1.5


def test_solution_meets_hot_spot_limit() -> None:
    p = RatingParams(k_max=3.0)
    ambient = np.linspace(-30, 90, 50)
    k = allowed_loading_factor(ambient, p)
    feasible = k > 0
    assert np.all(hot_spot_c(k[feasible], ambient[feasible], p) <= p.hot_spot_max_c + 1e-6)
    assert np.all((k == 0) | (hot_spot_c(k + 1e-6, ambient, p) > p.hot_spot_max_c - 1e-3))


def test_too_hot_gives_zero_and_nan_uses_fallback() -> None:
    p = RatingParams()
    assert float(allowed_loading_factor(100.0, p)) == 0.0
    assert float(allowed_loading_factor(np.nan, p)) == float(allowed_loading_factor(p.ambient_fallback_c, p))


def test_off_by_default_means_nameplate() -> None:
    assert np.all(rating_factor(np.array([35.0, 45.0]), None) == 1.0)
    assert np.all(rating_factor(np.array([35.0, 45.0]), RatingParams()) == 1.0)
    assert np.all(rating_factor(np.array([35.0, 45.0]), RatingParams(enabled=True)) < 1.0)


@settings(max_examples=100, deadline=None)
@given(st.floats(-40, 60), st.floats(-40, 60))
def test_monotonic_in_ambient(a: float, b: float) -> None:
    p = RatingParams(k_max=2.0)
    ka, kb = allowed_loading_factor(np.array([a, b]), p)
    if a <= b:
        assert ka >= kb - 1e-9
