"""The service over the in-process bus and store with a simulated clock: inputs in, headroom out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.common.v1 import common_pb2
from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.forecasting.core.weather import WeatherSeries, parse_open_meteo
from gridcharge.forecasting.service import STORE_KEY, ForecastingService
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Record
from gridcharge.shared.clock import SimClock
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import build_runtime
from gridcharge.shared.topology import parse_topology

DATA = Path(__file__).parent / "data"
START = datetime(2026, 6, 1, 5, 0, tzinfo=UTC)
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


class FakeWeather:
    name = "recorded-test"

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def get(self, latitude: float, longitude: float) -> WeatherSeries:
        self.calls += 1
        if self.fail:
            from gridcharge.forecasting.adapters.weather import WeatherUnavailable

            raise WeatherUnavailable("http://test/v1/forecast", "HTTP 503", 3)
        return parse_open_meteo(json.loads((DATA / "open_meteo_forecast.json").read_text(encoding="utf-8")))

    async def aclose(self) -> None:
        return None


def _ts(t: pd.Timestamp) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(t.value))
    return out


def _history_records(node: str, days: int) -> list[bytes]:
    end = pd.Timestamp(START)
    out = []
    for t in pd.date_range(end - pd.Timedelta(days=days), end, freq="15min", inclusive="left"):
        msg = grid_pb2.NodeLoadInterval(
            node_id=node,
            interval_start=_ts(t),
            interval_s=900,
            mean_base_load_w=common_pb2.PhaseValues(l1=8000, l2=9000, l3=7000),
        )
        out.append(msg.SerializeToString())
    return out


async def _service(weather: FakeWeather) -> tuple[ForecastingService, SimClock]:
    clock = SimClock(START)
    rt = build_runtime(Settings(replica_id="t1"), clock=clock)
    await rt.bus.start()
    svc = ForecastingService(rt, parse_topology(TOPOLOGY), weather)
    return svc, clock


async def test_run_publishes_headroom_per_node_to_bus_and_store() -> None:
    weather = FakeWeather()
    svc, _clock = await _service(weather)
    for value in _history_records("tr1", 14):
        await svc.on_history(Record(contracts.NODE_LOAD_HISTORY.name, "tr1", value))
    received: list[Record] = []

    async def collect(rec: Record) -> None:
        received.append(rec)

    await svc.rt.bus.subscribe([contracts.HEADROOM.name], "test", collect)
    assert await svc.refresh_weather()
    result = await svc.run_once()
    await svc.rt.bus.flush()
    assert {r.key for r in received} == {"tr1", "panel"}
    msg = contracts.decode(forecast_pb2.HeadroomForecast, next(r.value for r in received if r.key == "tr1"))
    assert len(msg.slots) == 192 and msg.step_s == 900
    assert msg.start.ToDatetime(tzinfo=UTC) == START
    assert msg.slots[0].binding_source in {"rating", "ambient", "base_load"}
    assert 8000 <= msg.slots[0].base_load_w.l1 <= 8000 * 1.1 + 1e-6
    assert not msg.degraded
    stored = await svc.rt.store.get(STORE_KEY.format(node_id="panel"))
    assert stored is not None
    noon = 7 * 4  # 12:00 UTC is slot 28 from 05:00
    assert result.headroom["panel"].pv_credit_w[:, noon].sum() > 1000
    await svc.rt.bus.stop()


async def test_external_limit_triggers_and_binds() -> None:
    svc, _clock = await _service(FakeWeather())
    now = pd.Timestamp(START)
    limit = grid_pb2.ExternalLimit(
        meta=common_pb2.Meta(producer="dso", produced_at=_ts(now)),
        node_id="tr1",
        limit_id="dso-7",
        source="dso",
        valid_from=_ts(now),
        valid_to=_ts(now + pd.Timedelta(hours=6)),
        limit_w=common_pb2.PhaseValues(l1=20000, l2=20000, l3=20000),
        fallback_limit_w=common_pb2.PhaseValues(l1=10000, l2=10000, l3=10000),
        stale_after_s=3600,
    )
    await svc.on_external_limit(Record(contracts.EXTERNAL_LIMITS.name, "tr1", limit.SerializeToString()))
    assert svc._trigger.is_set()
    await svc.refresh_weather()
    result = await svc.run_once()
    h = result.headroom["tr1"]
    assert np.allclose(h.limit_w[:, :4], 20000)  # first hour: the DSO limit
    assert np.allclose(h.limit_w[:, 4:24], 10000)  # no update within 1 h → declared fallback
    assert np.all(h.limit_w[:, 24:] > 20000)  # after the window: own rating
    assert h.slot_source()[0] in {"external:dso-7", "base_load"}
    assert h.degraded
    await svc.rt.bus.stop()


async def test_station_scoped_limit_is_not_node_headroom() -> None:
    """A station's own limit (OCPP NotifyChargingLimit via the gateway) binds that station only: the
    allocator applies it; the node's headroom must not shrink to it."""
    svc, _clock = await _service(FakeWeather())
    now = pd.Timestamp(START)
    limit = grid_pb2.ExternalLimit(
        node_id="tr1",
        limit_id="CS1/0/SO",
        source="ocpp-so",
        station_id="CS1",
        valid_from=_ts(now),
        limit_w=common_pb2.PhaseValues(l1=2300, l2=2300, l3=2300),
    )
    await svc.on_external_limit(Record(contracts.EXTERNAL_LIMITS.name, "tr1/CS1/0/SO", limit.SerializeToString()))
    assert not svc._limits.get("tr1")
    await svc.rt.bus.stop()


async def test_weather_outage_keeps_last_forecast_then_degrades() -> None:
    weather = FakeWeather()
    svc, clock = await _service(weather)
    await svc.refresh_weather()
    weather.fail = True
    await clock.advance(2 * 3600)
    assert not await svc.refresh_weather()
    assert svc._weather is not None  # 2 h old: still used
    await clock.advance(13 * 3600)
    await svc.refresh_weather()
    assert svc._weather is None
    result = await svc.run_once()
    assert all(h.degraded for h in result.headroom.values())
    await svc.rt.bus.stop()


async def _until(cond: Callable[[], bool], tries: int = 300) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_loop_recomputes_every_15_minutes_on_the_injected_clock() -> None:
    svc, clock = await _service(FakeWeather())
    await svc.start()
    await _until(lambda: svc.last_run_at is not None)
    for _ in range(3):
        first = svc.last_run_at
        await _until(lambda: clock.next_deadline() is not None)  # the loop sleeps on the clock
        await clock.advance(905)  # ticks land 1 s after each quarter hour

        def ran(first: float | None = first) -> bool:
            return svc.last_run_at != first

        await _until(ran)
        assert svc.last_run_at is not None and first is not None and svc.last_run_at > first
    assert svc.rt.store is not None
    await svc.stop()
    await svc.rt.bus.stop()


async def test_pv_systems_in_another_weather_cell_get_their_own_weather() -> None:
    topo = json.loads(json.dumps(TOPOLOGY))
    topo["pv_systems"].append(
        {
            "id": "far",
            "node": "panel",
            "kwp": 40,
            "tilt_deg": 20,
            "azimuth_deg": 180,
            "latitude": 49.0,
            "longitude": 8.4,
        }
    )
    weather = FakeWeather()
    clock = SimClock(START)
    rt = build_runtime(Settings(replica_id="t2"), clock=clock)
    await rt.bus.start()
    svc = ForecastingService(rt, parse_topology(topo), weather)
    assert len(svc._cells) == 2 and svc._system_cell.tolist() == [0, 1]
    await svc.refresh_weather()
    assert weather.calls == 2
    result = await svc.run_once()
    assert result.pv is not None and result.pv.ac_w.shape == (2, 192)
    await rt.bus.stop()
