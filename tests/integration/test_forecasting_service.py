"""The forecasting service as `gridcharge serve` hosts it: real httpx weather client against a local
Open-Meteo-compatible server (first answer 503, then a recorded-shape response), in-process bus and store,
HTTP edge with /metrics and the headroom API."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pandas as pd
import pytest
from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.forecasting.main import create_service
from gridcharge.forecasting.synthetic import open_meteo_payload, site_weather_15min
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Record
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import build_runtime
from gridcharge.shared.service import Host
from gridcharge.shared.topology import parse_topology

TOPOLOGY = {
    "site": {"id": "depot", "timezone": "Europe/Berlin", "latitude": 48.0, "longitude": 7.85},
    "nodes": [
        {"id": "tr1", "kind": "transformer", "limit_w": [60000, 60000, 60000], "metered": True},
        {"id": "panel", "parent": "tr1", "limit_a": [100, 100, 100]},
    ],
    "pv_systems": [{"id": "roof", "node": "panel", "kwp": 40, "tilt_deg": 20, "azimuth_deg": 180}],
}


@pytest.fixture
def weather_server() -> Iterator[tuple[str, list[str]]]:
    today = pd.Timestamp.now(tz="UTC").floor("D").tz_localize(None).strftime("%Y-%m-%d")
    start = (pd.Timestamp(today) - pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    body = json.dumps(open_meteo_payload(site_weather_15min(48.0, 7.85, start, 4), 48.0, 7.85)).encode()
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            status, payload = (503, b"busy") if len(requests) == 1 else (200, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]!s}", requests
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("mode", ["memory", pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.redis])])
async def test_service_fetches_weather_with_retry_and_publishes_headroom(
    weather_server: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    request: pytest.FixtureRequest,
) -> None:
    url, requests = weather_server
    monkeypatch.delenv("GRIDCHARGE_WEATHER_FILE", raising=False)
    extra: dict[str, object] = {}
    if mode == "kafka":  # the same service on real Kafka and Redis
        run = uuid.uuid4().hex[:8]
        extra = {
            "bus": "kafka",
            "kafka_bootstrap": request.getfixturevalue("kafka_bootstrap"),
            "redis_url": request.getfixturevalue("redis_url"),
            "topic_prefix": f"fc{run}.",
            "store_prefix": f"fc{run}:",
        }
    rt = build_runtime(Settings(http_port=0, http_host="127.0.0.1", weather_base_url=url, replica_id="it", **extra))
    service = create_service(rt, parse_topology(TOPOLOGY))
    received: list[Record] = []

    async def collect(rec: Record) -> None:
        received.append(rec)

    host = Host(rt, [service])
    await host.start()
    try:
        await rt.bus.subscribe([contracts.HEADROOM.name], "it-reader", collect)
        for _ in range(1500):
            if {r.key for r in received} >= {"tr1", "panel"}:
                break
            await asyncio.sleep(0.02)
        assert {r.key for r in received} >= {"tr1", "panel"}
        assert len(requests) == 2 and "/v1/forecast?" in requests[1]  # 503, then success
        msg = forecast_pb2.HeadroomForecast()
        msg.ParseFromString(next(r.value for r in received if r.key == "panel"))
        assert len(msg.slots) == 192 and msg.HasField("weather_as_of")
        assert max(s.pv_w.l1 for s in msg.slots) > 1000  # PV credited during the day
        assert host.http is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{host.http.port}") as client:
            api = (await client.get("/api/forecast/headroom/tr1")).json()
            metrics = (await client.get("/metrics")).text
            ready = await client.get("/readyz")
        assert len(api["headroom_w"]) == 192 and len(api["source"]) == 192
        assert 'gridcharge_headroom_watts{node="tr1",phase="L1"}' in metrics
        assert 'gridcharge_weather_requests_total{outcome="error"}' in metrics
        assert 'gridcharge_weather_requests_total{outcome="ok"}' in metrics
        assert 'gridcharge_forecast_age_seconds{kind="weather"}' in metrics
        assert ready.status_code == 200
        assert await rt.store.get("forecast:headroom:tr1") is not None
    finally:
        await host.stop()
