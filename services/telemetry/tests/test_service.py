"""The telemetry service on the in-process bus and simulated clock: bus in, NodeLoad/history/store out,
poison messages skipped, HTTP ingest."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from gridcharge.command.v1 import command_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts as C
from gridcharge.shared.bus.base import Record
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.clock import SimClock
from gridcharge.shared.codec import to_timestamp
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.memory import MemoryStore
from gridcharge.station.v1 import station_pb2
from gridcharge.telemetry.main import create_service
from gridcharge.telemetry.service import TelemetryService
from gridcharge.telemetry.settings import TelemetrySettings
from gridcharge.telemetry.testing import (
    T0,
    event,
    grid,
    heartbeat,
    phase_power,
    result,
    set_profile,
    status,
    topology,
)
from prometheus_client import REGISTRY


@pytest.fixture
async def setup() -> AsyncIterator[tuple[TelemetryService, Runtime, SimClock, list[Record]]]:
    clock = SimClock(datetime.fromtimestamp(T0, UTC))
    rt = Runtime(settings=Settings(), bus=MemoryBus(), store=MemoryStore(clock), clock=clock)
    svc = TelemetryService(rt, topology(), TelemetrySettings(telemetry_snapshot_s=5, telemetry_history_s=900))
    await rt.bus.start()
    out: list[Record] = []

    async def collect(rec: Record) -> None:
        out.append(rec)

    await rt.bus.subscribe([C.NODE_LOAD.name, C.NODE_LOAD_HISTORY.name], "test-out", collect)
    await svc.start()
    yield svc, rt, clock, out
    await svc.stop()
    await rt.bus.stop()


async def test_bus_in_node_load_out(setup: tuple[TelemetryService, Runtime, SimClock, list[Record]]) -> None:
    svc, rt, clock, out = setup
    assert svc.mode == "bus" and svc.ready
    for sid in ("S1", "S2", "S3"):
        await rt.bus.publish(C.STATION_EVENTS.name, sid, heartbeat(sid, T0).SerializeToString())
    for sid, e in (("S1", 1), ("S2", 1), ("S3", 1), ("S3", 2)):
        await rt.bus.publish(C.STATION_EVENTS.name, sid, status(sid, e, T0, "Available").SerializeToString())
    await rt.bus.publish(C.METER_VALUES.name, "S1", phase_power("S1", 1, T0, 1000, 2000, 3000).SerializeToString())
    await rt.bus.publish(C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0, 9000, 9000, 9000).SerializeToString())
    await rt.bus.publish(C.METER_VALUES.name, "S1", b"\xff\x00garbage")  # poison: skipped
    await rt.bus.flush()
    assert svc.engine.poison == 1
    await clock.advance(5)
    await rt.bus.flush()
    loads = {r.key: C.decode(grid_pb2.NodeLoad, r.value) for r in out if r.topic == C.NODE_LOAD.name}
    assert set(loads) == {"trafo", "panel"}
    panel, trafo = loads["panel"], loads["trafo"]
    assert (panel.load_w.l1, panel.load_w.l2, panel.load_w.l3) == (3000, 1000, 2000)
    assert (trafo.load_w.l1, trafo.base_load_w.l1, trafo.ev_load_w.l2) == (9000, 6000, 1000)
    assert trafo.metered and trafo.stale_sources == 0 and math.isnan(trafo.ambient_temperature_c)
    stored = await rt.store.get("nodeload:trafo")
    assert stored is not None and C.decode(grid_pb2.NodeLoad, stored).load_w.l1 == 9000
    assert REGISTRY.get_sample_value("gridcharge_node_load_watts", {"node": "trafo", "phase": "L1"}) == 9000
    assert (
        REGISTRY.get_sample_value("gridcharge_telemetry_readings_total", {"kind": "station", "outcome": "ok"}) or 0
    ) >= 1


async def test_history_every_15_minutes(setup: tuple[TelemetryService, Runtime, SimClock, list[Record]]) -> None:
    _svc, rt, clock, out = setup
    for t in range(0, 905, 5):
        await rt.bus.publish(
            C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0 + t, 1000 + t, 0, 0, ambient=20).SerializeToString()
        )
        await rt.bus.flush()
        await clock.advance(5)
        await rt.bus.flush()
    hist = [C.decode(grid_pb2.NodeLoadInterval, r.value) for r in out if r.topic == C.NODE_LOAD_HISTORY.name]
    trafo = [h for h in hist if h.node_id == "trafo"]
    assert len(trafo) == 1
    h = trafo[0]
    assert h.interval_s == 900 and h.interval_start.seconds == int(T0)
    assert h.max_load_w.l1 == pytest.approx(1000 + 890)  # snapshot at T0+895 sees the reading of T0+890
    assert 1000 < h.mean_load_w.l1 < 1900
    assert h.mean_ambient_temperature_c == 20


async def test_http_ingest(setup: tuple[TelemetryService, Runtime, SimClock, list[Record]]) -> None:
    svc, rt, clock, _ = setup
    app = FastAPI()
    for r in svc.routers:
        app.include_router(r)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        ok = await client.post(
            "/api/v1/meter-readings",
            json={
                "node_id": "trafo",
                "meter_id": "scada",
                "power_w": [5000, 6000, 7000],
                "current_a": [22, 26, 30],
                "ambient_temperature_c": 18.5,
            },
        )
        assert ok.status_code == 202 and ok.json() == {"accepted": 1}
        many = await client.post(
            "/api/v1/meter-readings",
            json={
                "readings": [
                    {"node_id": "trafo", "power_w": [1, 2, 3], "measured_at": "2026-06-01T00:00:00Z"},
                    {"node_id": "panel", "power_w": [1, 2, 3]},
                ]
            },
        )
        assert many.status_code == 202 and many.json() == {"accepted": 2}
        bad = await client.post(
            "/api/v1/meter-readings",
            json=[{"node_id": "trafo", "power_w": [1, 2]}, {"node_id": "nowhere", "power_w": [1, 2, 3]}],
        )
        assert bad.status_code == 422
        assert any("power_w" in map(str, e["loc"]) for e in bad.json()["detail"])
        unknown = await client.post("/api/v1/meter-readings", json={"node_id": "nowhere", "power_w": [1, 2, 3]})
        assert unknown.status_code == 422 and "unknown node 'nowhere'" in unknown.text
        naive = await client.post(
            "/api/v1/meter-readings",
            json={"node_id": "trafo", "power_w": [1, 2, 3], "measured_at": "2026-06-01T00:00:00"},
        )
        assert naive.status_code == 422 and "timezone" in naive.text
        await rt.bus.flush()
        await clock.advance(5)
        got = await client.get("/api/v1/node-load/trafo")
        assert got.status_code == 200
        body = got.json()
        assert body["load_w"] == {"L1": 5000, "L2": 6000, "L3": 7000} and body["ambient_temperature_c"] == 18.5
        assert (await client.get("/api/v1/node-load/x")).status_code == 404
        evs = (await client.get("/api/v1/evses")).json()["evses"]
        assert {(e["station_id"], e["evse_id"]) for e in evs} == {("S1", 1), ("S2", 1), ("S3", 1), ("S3", 2)}
        assert all(e["stale"] and e["worst_case_a"] > 0 for e in evs)  # never heard of: worst case


def test_create_service_picks_runtime() -> None:
    clock = SimClock()
    rt = Runtime(settings=Settings(), bus=MemoryBus(), store=MemoryStore(clock), clock=clock)
    assert create_service(rt, topology()).mode == "bus"


async def test_fast_path_publishes_meter_jumps_at_once(
    setup: tuple[TelemetryService, Runtime, SimClock, list[Record]],
) -> None:
    _svc, rt, clock, out = setup
    lim = 100 * 230.0
    await rt.bus.publish(C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0, 0.95 * lim, 0, 0).SerializeToString())
    await rt.bus.flush()
    fast = [C.decode(grid_pb2.NodeLoad, r.value) for r in out if r.topic == C.NODE_LOAD.name]
    assert [f.node_id for f in fast] == ["trafo"] and fast[0].load_w.l1 == pytest.approx(0.95 * lim)
    # a small change right after is not urgent: it waits for the next snapshot
    await clock.advance(1)
    await rt.bus.publish(
        C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0 + 1, 0.5 * lim, 0.01 * lim, 0).SerializeToString()
    )
    await rt.bus.flush()
    assert len([r for r in out if r.topic == C.NODE_LOAD.name]) == 2  # 0.95 -> 0.5 is a big move
    await clock.advance(1)
    await rt.bus.publish(
        C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0 + 2, 0.51 * lim, 0.01 * lim, 0).SerializeToString()
    )
    await rt.bus.flush()
    assert len([r for r in out if r.topic == C.NODE_LOAD.name]) == 2


async def test_fast_path_batches_within_min_interval(
    setup: tuple[TelemetryService, Runtime, SimClock, list[Record]],
) -> None:
    _svc, rt, clock, out = setup
    await rt.bus.publish(C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0, 22000, 0, 0).SerializeToString())
    await rt.bus.flush()
    n0 = len([r for r in out if r.topic == C.NODE_LOAD.name])
    await clock.advance(0.1)
    await rt.bus.publish(C.GRID_METER_READINGS.name, "panel", grid("panel", T0 + 0.1, 14000, 0, 0).SerializeToString())
    await rt.bus.flush()
    assert len([r for r in out if r.topic == C.NODE_LOAD.name]) == n0  # deferred: within 0.5 s
    await clock.advance(0.5)
    await rt.bus.flush()
    fast = [C.decode(grid_pb2.NodeLoad, r.value) for r in out if r.topic == C.NODE_LOAD.name][n0:]
    assert [f.node_id for f in fast] == ["panel", "trafo"] and fast[0].load_w.l1 == 14000


async def test_cut_seen_on_the_bus_keeps_the_base_load(
    setup: tuple[TelemetryService, Runtime, SimClock, list[Record]],
) -> None:
    """A station-cap lease accepted on COMMANDS + COMMAND_RESULTS: once the EV had time to follow the cut, the
    NodeLoads keep base = meter − EV at the true base load — the periodic one while the meter's last reading
    still predates the cut (it is not new base load), and the one after the meter's next reading."""
    _svc, rt, clock, out = setup
    base, v = 5000.0, 230.0

    async def pub(topic: str, key: str, msg: bytes) -> None:
        await rt.bus.publish(topic, key, msg)
        await rt.bus.flush()

    await pub(
        C.STATION_EVENTS.name,
        "S2",
        event(
            "S2", T0, transaction_started=station_pb2.TransactionStarted(transaction_id="t", evse_id=1)
        ).SerializeToString(),
    )
    await pub(C.METER_VALUES.name, "S2", phase_power("S2", 1, T0, 16 * v, tx="t").SerializeToString())
    await pub(C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0, 0, 0, base + 16 * v).SerializeToString())
    await clock.advance(5)
    cmd = set_profile("S2", 0, 8.0, "cut", purpose=command_pb2.PROFILE_PURPOSE_STATION_MAX)
    cmd.set_charging_profile.profile.valid_to.CopyFrom(to_timestamp(T0 + 1200))
    await pub(C.COMMANDS.name, "S2", cmd.SerializeToString())
    await pub(
        C.COMMAND_RESULTS.name, "S2", result("S2", "cut", command_pb2.COMMAND_OUTCOME_ACCEPTED).SerializeToString()
    )
    await clock.advance(6)

    def trafo_loads(since: int) -> list[grid_pb2.NodeLoad]:
        loads = [C.decode(grid_pb2.NodeLoad, r.value) for r in out[since:] if r.topic == C.NODE_LOAD.name]
        return [x for x in loads if x.node_id == "trafo"]

    before = trafo_loads(0)[-1]  # published after the EV's follow time, the reading still the one of T0
    assert before.load_w.l3 == pytest.approx(base + 8 * v)
    assert before.base_load_w.l3 == pytest.approx(base, abs=50)
    n = len(out)
    await pub(C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0 + 11, 0, 0, base + 8 * v).SerializeToString())
    await clock.advance(5)
    after = trafo_loads(n)
    assert after and after[-1].load_w.l3 == pytest.approx(base + 8 * v)
    assert after[-1].base_load_w.l3 == pytest.approx(base, abs=50)


async def test_fast_path_big_move_not_held_back_by_meters_near_their_limit(
    setup: tuple[TelemetryService, Runtime, SimClock, list[Record]],
) -> None:
    """Meters that sit above 90 % of their limit and report every second must not delay, by the fast path's
    minimum interval, the reading that shows an overload; a steady one near its limit is not urgent at all."""
    _svc, rt, clock, out = setup
    trafo, panel = 100 * 230.0, 63 * 230.0

    def fast() -> list[tuple[str, float]]:
        return [
            (m.node_id, m.load_w.l1)
            for m in (C.decode(grid_pb2.NodeLoad, r.value) for r in out if r.topic == C.NODE_LOAD.name)
        ]

    await rt.bus.publish(C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0, 0.95 * trafo, 0, 0).SerializeToString())
    await rt.bus.publish(C.GRID_METER_READINGS.name, "panel", grid("panel", T0, 0.95 * panel, 0, 0).SerializeToString())
    await rt.bus.flush()
    await clock.advance(1.1)  # both first readings published (the panel's 0.5 s later)
    await rt.bus.flush()
    n = len(fast())
    await rt.bus.publish(
        C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0 + 1.1, 0.951 * trafo, 0, 0).SerializeToString()
    )  # steady: not urgent
    await rt.bus.flush()
    assert len(fast()) == n
    await rt.bus.publish(
        C.GRID_METER_READINGS.name, "panel", grid("panel", T0 + 1.1, 0.97 * panel, 0, 0).SerializeToString()
    )  # near, moved: urgent
    await rt.bus.flush()
    assert fast()[n:] == [("panel", pytest.approx(0.97 * panel)), ("trafo", pytest.approx(0.951 * trafo))]
    await clock.advance(0.1)
    await rt.bus.publish(
        C.GRID_METER_READINGS.name, "trafo", grid("trafo", T0 + 1.2, 1.2 * trafo, 0, 0).SerializeToString()
    )  # the overload
    await rt.bus.flush()
    assert fast()[-1] == ("trafo", pytest.approx(1.2 * trafo))
