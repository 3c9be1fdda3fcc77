"""Headroom: limits, external limits (window, schedule, stale fallback), PV credit, sources."""

from __future__ import annotations

import numpy as np
import pandas as pd
from gridcharge.forecasting.core.headroom import (
    ExternalLimitSpec,
    HeadroomOptions,
    NodeHeadroomInputs,
    compute_headroom,
    pv_per_node_phase,
)
from gridcharge.forecasting.core.rating import RatingParams
from gridcharge.forecasting.core.weather import slot_starts
from hypothesis import given, settings
from hypothesis import strategies as st

NOW = pd.Timestamp("2026-06-10T12:00Z")
SLOTS = slot_starts(NOW, 4)  # 16 slots
T = len(SLOTS)


def _inputs(**kw: object) -> NodeHeadroomInputs:
    base = dict(
        node_id="tr1",
        nameplate_w=(50_000.0, 50_000.0, 50_000.0),
        base_load_upper_w=np.full((3, T), 10_000.0),
        pv_w=np.zeros((3, T)),
        ambient_c=np.full(T, 20.0),
        safety_margin_pct=0.0,
    )
    base.update(kw)
    return NodeHeadroomInputs(**base)  # type: ignore[arg-type]


def test_plain_nameplate_minus_base_load() -> None:
    h = compute_headroom(_inputs(), SLOTS, NOW)
    assert np.allclose(h.headroom_w, 40_000.0)
    assert set(h.source.ravel()) == {"rating"}
    assert not h.degraded


def test_safety_margin_and_pv_credit() -> None:
    pv = np.zeros((3, T))
    pv[0] = 6_000.0
    h = compute_headroom(_inputs(pv_w=pv, safety_margin_pct=5.0), SLOTS, NOW, HeadroomOptions(pv_credit_factor=0.5))
    assert np.allclose(h.headroom_w[0], 50_000 - 10_000 + 3_000 - 2_500)
    assert np.allclose(h.headroom_w[1], 50_000 - 10_000 - 2_500)


def test_dynamic_rating_on_a_hot_day_is_the_binding_source() -> None:
    ambient = np.full(T, 35.0)
    h = compute_headroom(_inputs(ambient_c=ambient, rating=RatingParams(enabled=True)), SLOTS, NOW)
    assert np.all(h.rating_w < 50_000.0)
    assert set(h.source.ravel()) == {"ambient"}
    cold = compute_headroom(_inputs(ambient_c=np.full(T, 5.0), rating=RatingParams(enabled=True)), SLOTS, NOW)
    assert np.allclose(cold.rating_w, 50_000.0)  # never above nameplate by default


def test_external_limit_applies_in_its_window_only() -> None:
    spec = ExternalLimitSpec(
        limit_id="dso-1",
        limit_w=(20_000.0, 20_000.0, 20_000.0),
        updated_at=NOW,
        valid_from=NOW + pd.Timedelta(hours=1),
        valid_to=NOW + pd.Timedelta(hours=2),
    )
    h = compute_headroom(_inputs(external_limits=[spec]), SLOTS, NOW)
    inside = (SLOTS >= NOW + pd.Timedelta(hours=1)) & (SLOTS < NOW + pd.Timedelta(hours=2))
    assert np.allclose(h.limit_w[:, inside], 20_000.0)
    assert np.allclose(h.limit_w[:, ~inside], 50_000.0)
    assert set(h.source[:, inside].ravel()) == {"external:dso-1"}
    assert h.slot_source()[0] == "rating"


def test_external_limit_above_node_limit_does_not_raise_it() -> None:
    spec = ExternalLimitSpec(limit_id="x", limit_w=(90_000.0,) * 3, updated_at=NOW)
    h = compute_headroom(_inputs(external_limits=[spec]), SLOTS, NOW)
    assert np.allclose(h.limit_w, 50_000.0)


def test_stale_external_source_uses_declared_fallback() -> None:
    spec = ExternalLimitSpec(
        limit_id="dso-1",
        limit_w=(30_000.0,) * 3,
        updated_at=NOW - pd.Timedelta(hours=2),
        fallback_limit_w=(15_000.0,) * 3,
        stale_after_s=3600,
    )
    h = compute_headroom(_inputs(external_limits=[spec], base_load_upper_w=np.full((3, T), 1_000.0)), SLOTS, NOW)
    assert np.allclose(h.limit_w, 15_000.0)
    assert set(h.source.ravel()) == {"fallback"}
    assert h.degraded


def test_fresh_external_source_falls_back_from_when_it_would_go_stale() -> None:
    spec = ExternalLimitSpec(
        limit_id="dso-1",
        limit_w=(30_000.0,) * 3,
        updated_at=NOW,
        fallback_limit_w=(15_000.0,) * 3,
        stale_after_s=2 * 3600,
        schedule=((NOW + pd.Timedelta(hours=1), (25_000.0, 25_000.0, 25_000.0)),),
    )
    h = compute_headroom(_inputs(external_limits=[spec]), SLOTS, NOW)
    hours = (SLOTS - NOW).total_seconds() / 3600
    assert np.allclose(h.limit_w[:, hours < 1], 30_000.0)
    assert np.allclose(h.limit_w[:, (hours >= 1) & (hours < 2)], 25_000.0)
    assert np.allclose(h.limit_w[:, hours >= 2], 15_000.0)


def test_base_load_is_binding_when_it_takes_most_of_the_limit() -> None:
    h = compute_headroom(_inputs(base_load_upper_w=np.full((3, T), 30_000.0)), SLOTS, NOW)
    assert set(h.source.ravel()) == {"base_load"}
    over = compute_headroom(_inputs(base_load_upper_w=np.full((3, T), 60_000.0)), SLOTS, NOW)
    assert np.all(over.headroom_w < 0)  # not clipped: the allocator sees the overload


def test_pv_per_node_phase_sums_systems_at_or_below_node() -> None:
    ac = np.array([[1000.0, 2000.0], [300.0, 600.0], [90.0, 0.0]])  # 3 systems × 2 steps
    membership = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # root has all, panel has systems 1, 2
    phases = np.array([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = pv_per_node_phase(ac, membership, phases)
    assert out.shape == (2, 3, 2)
    assert np.allclose(out[1, 0], [300.0, 600.0]) and np.allclose(out[1, 2], [90.0, 0.0])
    assert np.allclose(out[0].sum(axis=0), ac.sum(axis=0))


def test_thermal_nameplate_below_node_limit_is_rating_not_ambient() -> None:
    cool = compute_headroom(
        _inputs(thermal_nameplate_w=(40_000.0,) * 3, rating=RatingParams(enabled=True), ambient_c=np.full(T, 15.0)),
        SLOTS,
        NOW,
    )
    assert np.allclose(cool.rating_w, 40_000.0) and set(cool.source.ravel()) == {"rating"}
    hot = compute_headroom(
        _inputs(
            thermal_nameplate_w=(40_000.0,) * 3,
            rating=RatingParams(enabled=True),
            ambient_c=np.full(T, 35.0),
            base_load_upper_w=np.zeros((3, T)),
        ),
        SLOTS,
        NOW,
    )
    assert np.all(hot.rating_w < 40_000.0) and set(hot.source.ravel()) == {"ambient"}


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0, 100_000),
    st.floats(0, 100_000),
    st.floats(0, 50_000),
    st.floats(-20, 45),
    st.floats(0, 1),
    st.floats(0, 20),
)
def test_headroom_identity_and_bounds(
    limit: float, base: float, pv: float, ambient: float, credit: float, margin: float
) -> None:
    inputs = _inputs(
        nameplate_w=(limit,) * 3,
        base_load_upper_w=np.full((3, T), base),
        pv_w=np.full((3, T), pv),
        ambient_c=np.full(T, ambient),
        rating=RatingParams(enabled=True),
        safety_margin_pct=margin,
    )
    h = compute_headroom(inputs, SLOTS, NOW, HeadroomOptions(pv_credit_factor=credit))
    assert np.all(h.limit_w <= limit + 1e-6)
    assert np.allclose(h.headroom_w, h.limit_w - h.base_load_w + h.pv_credit_w - h.margin_w)
    assert np.all(h.pv_credit_w <= pv * credit + 1e-6)
    assert np.all(h.headroom_w <= limit + pv * credit + 1e-6)
