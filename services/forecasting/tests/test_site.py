"""A whole forecasting run on a small topology (shared topology → GridModel → headroom per node)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from gridcharge.forecasting.adapters.topology import grid_model_from_topology
from gridcharge.forecasting.core.headroom import ExternalLimitSpec
from gridcharge.forecasting.core.site import forecast_site
from gridcharge.forecasting.core.weather import parse_open_meteo, resample_to, slot_midpoints, slot_starts
from gridcharge.shared.topology import parse_topology

DATA = Path(__file__).parent / "data"
NOW = pd.Timestamp("2026-06-01T06:00Z")

TOPOLOGY = {
    "site": {"name": "depot", "timezone": "Europe/Berlin", "latitude": 48.0, "longitude": 7.85},
    "nodes": [
        {
            "id": "tr1",
            "kind": "transformer",
            "limit_a": [400, 400, 400],
            "metered": True,
            "rating": {"dynamic": True, "nameplate_kva": 250, "max_loading_factor": 1.0},
        },
        {"id": "panel-a", "kind": "panel", "parent": "tr1", "limit_a": [100, 100, 100]},
    ],
    "stations": [{"id": "cs1", "node": "panel-a"}],
    "pv_systems": [
        {"id": "roof", "node": "panel-a", "kwp": 60, "tilt_deg": 20, "azimuth_deg": 180},
        {"id": "carport", "node": "tr1", "kwp": 30, "tilt_deg": 10, "azimuth_deg": 90, "phases": ["L2"]},
    ],
}


def _weather(slots: pd.DatetimeIndex) -> pd.DataFrame:
    series = parse_open_meteo(json.loads((DATA / "open_meteo_forecast.json").read_text(encoding="utf-8")))
    return resample_to(series, slot_midpoints(slots))


def _history() -> pd.DataFrame:
    idx = pd.date_range(NOW - pd.Timedelta(days=14), NOW, freq="15min", inclusive="left")
    return pd.DataFrame({"L1": 20_000.0, "L2": 25_000.0, "L3": 15_000.0}, index=idx)


def test_headroom_for_every_node_with_pv_below_and_sources() -> None:
    topo = parse_topology(TOPOLOGY)
    model = grid_model_from_topology(topo)
    assert model.pv_membership.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    slots = slot_starts(NOW, 48)
    limit = {
        "tr1": [
            ExternalLimitSpec("dso", (60_000.0,) * 3, NOW, NOW + pd.Timedelta(hours=30), NOW + pd.Timedelta(hours=32))
        ]
    }
    fc = forecast_site(model, slots, NOW, _weather(slots), {"tr1": _history()}, limit)
    assert set(fc.headroom) == {"tr1", "panel-a"}
    tr1, panel = fc.headroom["tr1"], fc.headroom["panel-a"]
    assert tr1.headroom_w.shape == (3, 192)
    # Thermal nameplate 250 kVA → 83.3 kW per phase, below the 400 A (92 kW) node limit.
    assert np.all(tr1.rating_w <= 250_000 / 3 + 1e-6)
    # PV: carport only on L2 of tr1; roof split on all phases of both nodes.
    assert fc.node_pv_w[0, 1].max() > fc.node_pv_w[0, 0].max()
    assert np.allclose(fc.node_pv_w[1, 1], fc.node_pv_w[1, 0])
    noon = slots.get_loc(pd.Timestamp("2026-06-01T11:00Z"))
    assert panel.pv_credit_w[:, noon].sum() > 0
    assert 25_000.0 <= tr1.base_load_w[1, noon] <= 27_500.0 + 1e-6  # 2 weeks: thin profile → +10 %
    sources = set(tr1.source.ravel())
    assert "external:dso" in sources
    assert not panel.degraded  # unmetered panel: base load counted at the metered transformer
    assert fc.weather_available


def test_missing_weather_is_degraded_and_conservative() -> None:
    model = grid_model_from_topology(parse_topology(TOPOLOGY))
    slots = slot_starts(NOW, 48)
    fc = forecast_site(model, slots, NOW, None, {}, {})
    tr1 = fc.headroom["tr1"]
    assert tr1.degraded and "no weather forecast" in tr1.degraded_reasons
    assert np.all(tr1.pv_credit_w == 0)
    assert np.all(tr1.rating_w < 250_000 / 3)  # ambient unknown → hot fallback on the dynamic rating
    assert np.all(tr1.base_load_w > 0)  # metered without history → a share of the limit


def test_slots_without_weather_get_the_worst_case_only_there() -> None:
    model = grid_model_from_topology(parse_topology(TOPOLOGY))
    slots = slot_starts(NOW, 48)
    full = _weather(slots)
    gap = full.copy()
    lost = (slots >= pd.Timestamp("2026-06-02T10:00Z")) & (slots < pd.Timestamp("2026-06-02T12:00Z"))
    gap.iloc[lost] = np.nan  # 8 slots around noon of day 2 ...
    gap.iloc[-1, gap.columns.get_loc("temp_air_c")] = np.nan  # ... and the last slot has no temperature
    missing = lost.copy()
    missing[-1] = True
    history = {"tr1": _history()}
    fc_full = forecast_site(model, slots, NOW, full, history, {})
    fc_none = forecast_site(model, slots, NOW, None, history, {})
    fc = forecast_site(model, slots, NOW, gap, history, {})
    assert fc.weather_missing.tolist() == missing.tolist() and not fc.weather_available
    for node in ("tr1", "panel-a"):
        h, h_full, h_none = fc.headroom[node], fc_full.headroom[node], fc_none.headroom[node]
        assert h.slot_weather() == ["missing" if m else "forecast" for m in missing]
        assert h_full.slot_weather() == ["forecast"] * len(slots)
        # where the weather is: exactly the full forecast (PV, ambient, rating, headroom)
        assert np.allclose(h.headroom_w[:, ~missing], h_full.headroom_w[:, ~missing])
        assert np.allclose(h.pv_credit_w[:, ~missing], h_full.pv_credit_w[:, ~missing])
        # where it is not: exactly the no-weather worst case (PV 0, hot ambient on the dynamic rating)
        assert np.allclose(h.headroom_w[:, missing], h_none.headroom_w[:, missing])
        assert np.all(h.pv_credit_w[:, missing] == 0) and np.isnan(h.ambient_c[missing]).all()
        assert h.degraded and any("no weather for 9 of 192 slots" in r for r in h.degraded_reasons)
    noon_day1 = slots.get_loc(pd.Timestamp("2026-06-01T11:00Z"))
    assert fc.headroom["panel-a"].pv_credit_w[:, noon_day1].sum() > 0  # one gap does not drop all PV
    assert fc.pv is not None and not fc.pv.implausible[:, missing].any()
    assert np.all(fc.headroom["tr1"].rating_w[:, lost] < fc_full.headroom["tr1"].rating_w[:, lost])
