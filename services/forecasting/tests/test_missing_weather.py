"""Weather that does not cover every slot (#12.9): the production weather client against a local
Open-Meteo-compatible server, the service on the in-process bus with a simulated clock. Only the slots
without weather get the worst case (PV 0, hot ambient), each slot says where its weather came from, and a
metric and a log line report it."""

from __future__ import annotations

import copy
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.common.v1 import common_pb2
from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.forecasting.adapters.weather import ApiWeather
from gridcharge.forecasting.service import ForecastingService
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Record
from gridcharge.shared.clock import SimClock
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import build_runtime
from gridcharge.shared.topology import parse_topology
from prometheus_client import REGISTRY

WeatherServer = Any  # the conftest fixture type (conftest is not importable under importlib mode)

DATA = Path(__file__).parent / "data"
START = datetime(2026, 6, 1, 5, 0, tzinfo=UTC)  # 48 h horizon: slots 06-01 05:00 … 06-03 04:45
TOPOLOGY = {
    "site": {"id": "depot", "timezone": "Europe/Berlin", "latitude": 48.0, "longitude": 7.85},
    "nodes": [
        {
            "id": "tr1",
            "kind": "transformer",
            "limit_w": [60000, 60000, 60000],
            "metered": True,
            "rating": {"dynamic": True},
        },
        {"id": "panel", "parent": "tr1", "limit_a": [100, 100, 100]},
    ],
    "pv_systems": [{"id": "roof", "node": "panel", "kwp": 40, "tilt_deg": 20, "azimuth_deg": 180}],
}


def _recorded() -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((DATA / "open_meteo_forecast.json").read_text(encoding="utf-8"))
    return payload


def _ending_at(payload: dict[str, Any], last: str) -> dict[str, Any]:
    """The response with every value after ``last`` (UTC, as the API writes times) left out."""
    out = copy.deepcopy(payload)
    for block in ("hourly", "minutely_15"):
        keep = [i for i, t in enumerate(out[block]["time"]) if t <= last]
        out[block] = {k: [v[i] for i in keep] for k, v in out[block].items()}
    return out


def _nulls(payload: dict[str, Any], first: str, last: str) -> dict[str, Any]:
    """The response with every variable null from ``first`` to ``last`` (both blocks)."""
    out = copy.deepcopy(payload)
    for block in ("hourly", "minutely_15"):
        for i, t in enumerate(out[block]["time"]):
            if first <= t <= last:
                for k, values in out[block].items():
                    if k != "time":
                        values[i] = None
    return out


def _ts(t: pd.Timestamp) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(t.value))
    return out


async def _run(
    weather_server: WeatherServer, payload: dict[str, Any] | None
) -> tuple[ForecastingService, dict[str, forecast_pb2.HeadroomForecast]]:
    """Serve ``payload`` (None: HTTP 400, no weather), fetch it through the production client, run one
    forecast; the service and the messages it published."""
    weather_server.answer((200, 0.0, json.dumps(payload).encode()) if payload is not None else (400, 0.0, b"{}"))
    clock = SimClock(START)
    rt = build_runtime(Settings(replica_id="gap"), clock=clock)
    await rt.bus.start()
    svc = ForecastingService(rt, parse_topology(TOPOLOGY), ApiWeather(weather_server.url, clock, timeout_s=5.0))
    for t in pd.date_range(pd.Timestamp(START) - pd.Timedelta(days=14), START, freq="15min", inclusive="left"):
        msg = grid_pb2.NodeLoadInterval(
            node_id="tr1",
            interval_start=_ts(t),
            interval_s=900,
            mean_base_load_w=common_pb2.PhaseValues(l1=8000, l2=9000, l3=7000),
        )
        await svc.on_history(Record(contracts.NODE_LOAD_HISTORY.name, "tr1", msg.SerializeToString()))
    received: dict[str, forecast_pb2.HeadroomForecast] = {}

    async def collect(rec: Record) -> None:
        received[rec.key] = contracts.decode(forecast_pb2.HeadroomForecast, rec.value)

    await rt.bus.subscribe([contracts.HEADROOM.name], "test", collect)
    assert await svc.refresh_weather() == (payload is not None)
    await svc.run_once()
    await rt.bus.flush()
    await svc.stop()
    await rt.bus.stop()
    return svc, received


def _missing_slots() -> float | None:
    return REGISTRY.get_sample_value("gridcharge_weather_missing_slots")


async def test_horizon_one_slot_past_the_data_degrades_that_slot_only(
    weather_server: WeatherServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The provider's data ends at 03:45 on day 3: values are carried an hour, so the horizon's last slot
    # (04:45–05:00) is the one slot nothing covers.
    with caplog.at_level(logging.WARNING, logger="gridcharge.forecasting.service"):
        svc, msgs = await _run(weather_server, _ending_at(_recorded(), "2026-06-03T03:45"))
    assert svc.last is not None
    panel = svc.last.headroom["panel"]
    noon = 7 * 4  # 12:00 UTC is slot 28 from 05:00
    assert panel.pv_credit_w[:, noon].sum() > 1000  # PV is still forecast where there is weather
    assert svc.last.weather_missing.tolist() == [False] * 191 + [True]
    tr1 = msgs["tr1"]
    assert len(tr1.slots) == 192 and tr1.HasField("weather_as_of")
    assert [s.weather_source for s in tr1.slots] == ["forecast"] * 191 + ["missing"]
    assert all(np.isfinite(s.ambient_temperature_c) for s in tr1.slots[:-1])
    assert np.isnan(tr1.slots[-1].ambient_temperature_c)
    assert _missing_slots() == 1
    assert tr1.degraded
    assert any("no weather for 1 of 192 slots" in r for r in svc.last.headroom["tr1"].degraded_reasons)
    api = FastAPI()
    api.include_router(svc.routers[0])
    body = TestClient(api).get("/api/forecast/headroom/tr1").json()
    assert body["weather"] == ["forecast"] * 191 + ["missing"] and body["degraded"]
    # the missing slot holds the worst case: what the service computes with no weather at all
    worst, _ = await _run(weather_server, None)
    assert worst.last is not None and worst.last.weather_missing.all()
    for node in ("tr1", "panel"):
        assert np.allclose(svc.last.headroom[node].headroom_w[:, -1], worst.last.headroom[node].headroom_w[:, -1])
        assert np.all(svc.last.headroom[node].pv_credit_w[:, -1] == 0)
    # ... and the rest is the forecast the full data gives
    full, _ = await _run(weather_server, _recorded())
    assert full.last is not None and not full.last.weather_missing.any()
    early = slice(0, 160)  # well before the data ended (the last hours are held, not interpolated)
    assert np.allclose(
        svc.last.headroom["panel"].headroom_w[:, early], full.last.headroom["panel"].headroom_w[:, early]
    )
    # said in the log (the metric is checked above)
    warnings = [r for r in caplog.records if "weather missing" in r.getMessage()]
    assert len(warnings) == 1 and getattr(warnings[0], "missing_slots", None) == 1


async def test_gaps_inside_the_data_short_interpolated_long_missing(weather_server: WeatherServer) -> None:
    short = _nulls(_recorded(), "2026-06-02T10:00", "2026-06-02T10:15")  # 30 min of nulls: interpolated
    svc, msgs = await _run(weather_server, short)
    assert svc.last is not None and not svc.last.weather_missing.any()
    assert {s.weather_source for s in msgs["panel"].slots} == {"forecast"} and not msgs["panel"].degraded
    assert _missing_slots() == 0

    long = _nulls(_recorded(), "2026-06-02T08:00", "2026-06-02T13:00")  # 5 h around noon: missing
    svc, msgs = await _run(weather_server, long)
    assert svc.last is not None
    starts = svc.last.slot_starts
    missing = svc.last.weather_missing
    lost = starts[missing]
    assert 8 <= len(lost) <= 16 and (np.diff(np.flatnonzero(missing)) == 1).all()  # one contiguous block ...
    assert lost[0] >= pd.Timestamp("2026-06-02T08:00Z") and lost[-1] < pd.Timestamp("2026-06-02T13:00Z")
    assert _missing_slots() == len(lost)
    panel = svc.last.headroom["panel"]
    assert np.all(panel.pv_credit_w[:, missing] == 0)  # ... with PV 0 there ...
    day2_morning = starts.get_loc(pd.Timestamp("2026-06-02T07:00Z"))
    day2_afternoon = starts.get_loc(pd.Timestamp("2026-06-02T14:00Z"))
    assert panel.pv_credit_w[:, day2_morning].sum() > 0 and panel.pv_credit_w[:, day2_afternoon].sum() > 0
    sources = [s.weather_source for s in msgs["panel"].slots]
    assert [i for i, s in enumerate(sources) if s == "missing"] == np.flatnonzero(missing).tolist()
