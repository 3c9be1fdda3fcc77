"""Operator API (in-process, through the bus) and metrics (names, label values, no station ids)."""

from __future__ import annotations

import asyncio

import httpx
from gridcharge.shared.auth import ApiAuth
from gridcharge.shared.http import Health, create_app
from prometheus_client import REGISTRY, generate_latest

from .conftest import Gateway, booted


async def test_operator_api_lists_stations_and_sends_commands(gateway: Gateway) -> None:
    auth = ApiAuth.with_tokens(ops=("operator", "gateway-test-operator-token-000000"))
    app = create_app("gateway", Health(), gateway.service.routers, auth=auth)
    c = await booted(gateway, "CP1", answers={"ChangeConfiguration": {"status": "Accepted"}})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gw",
        headers={"Authorization": "Bearer gateway-test-operator-token-000000"},
    ) as http:
        listing = (await http.get("/api/v1/stations")).json()
        assert listing[0]["station_id"] == "CP1" and listing[0]["protocol"] == "ocpp1.6"
        assert listing[0]["replica_id"] == "gw-test"
        resp = await http.post(
            "/api/v1/stations/CP1/commands/ChangeConfiguration", json={"key": "HeartbeatInterval", "value": "60"}
        )
        body = resp.json()
        assert resp.status_code == 200 and body["outcome"] == "COMMAND_OUTCOME_ACCEPTED", body
        assert body["status"] == "Accepted" and body["action"] == "ChangeConfiguration"
        resp = await http.post(
            "/api/v1/stations/CP1/commands/get_variables", json={"variables": [{"component": "X", "variable": "Y"}]}
        )
        assert resp.json()["outcome"] == "COMMAND_OUTCOME_INVALID"  # 2.0.1 only
        resp = await http.post("/api/v1/stations/CP1/commands/explode", json={})
        assert resp.status_code == 404
        resp = await http.post("/api/v1/stations/CP1/commands/reset", json={"type": 5})
        assert resp.status_code == 422
        resp = await http.post("/api/v1/stations/NOPE/commands/reset", json={"type": "Soft"})
        assert resp.json()["outcome"] == "COMMAND_OUTCOME_OFFLINE"
        spec = (await http.get("/openapi.json")).json()
        assert "/api/v1/stations/{station_id}/commands/{action}" in spec["paths"]
    await c.close()


async def test_metrics_have_no_station_labels(gateway: Gateway) -> None:
    c = await booted(gateway, "CP2")
    await c.call("Heartbeat", {})
    await c.call("NoSuchAction", {})
    await c.close()
    await asyncio.sleep(0.1)
    text = generate_latest(REGISTRY).decode()
    assert 'gridcharge_gateway_messages_total{action="Heartbeat",direction="in",outcome="ok"}' in text
    assert 'gridcharge_gateway_messages_total{action="unknown",direction="in",outcome="error"}' in text
    assert 'gridcharge_gateway_connected_stations{protocol="ocpp1.6"}' in text
    assert "CP2" not in text and "NoSuchAction" not in text
