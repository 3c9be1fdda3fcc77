"""The operator command passthrough cannot touch what the allocator owns (#15.1).

An operator POSTing set_charging_profile with `command_key=profile/0/ChargingStationMaxProfile/1&generation=9e18`
made every later allocator command for that key SUPERSEDED: after a DSO limit of 0 W the station stayed at 32 A
while the allocator believed 0 A. Profiles, smart-charging settings and generation ordering are refused here;
nothing reaches the bus or the station.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gridcharge.shared.auth import ApiAuth
from gridcharge.shared.bus.base import Record
from gridcharge.shared.contracts import COMMANDS
from gridcharge.shared.http import Health, create_app

from .conftest import Gateway, booted

TOKEN = "gateway-policy-operator-token-000000"
PIN = "?command_key=profile/0/ChargingStationMaxProfile/1&generation=9000000000000000000"
PROFILE = {
    "evseId": 0,
    "profile": {
        "profileId": 1001,
        "stackLevel": 1,
        "purpose": "PROFILE_PURPOSE_STATION_MAX",
        "kind": "Absolute",
        "rateUnit": "RATE_UNIT_A",
        "periods": [{"startPeriodS": 0, "limit": 32}],
    },
}


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[tuple[httpx.AsyncClient, list[Record]]]:
    sent: list[Record] = []

    async def on_command(rec: Record) -> None:
        sent.append(rec)

    await gateway.bus.subscribe([COMMANDS.name], "policy-test", on_command)
    app = create_app("gateway", Health(), gateway.service.routers, auth=ApiAuth.with_tokens(ops=("operator", TOKEN)))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as http:
        yield http, sent


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/stations/CP1/commands/set_charging_profile" + PIN, PROFILE),
        ("/api/v1/stations/CP1/commands/SetChargingProfile", PROFILE),
        ("/api/v1/stations/CP1/commands/clear_charging_profile", {"profileId": 1001}),
        ("/api/v1/stations/CP1/commands/ClearChargingProfile", {}),
        ("/api/v1/stations/CP1/commands/change_configuration", {"key": "ChargeProfileMaxStackLevel", "value": "0"}),
        (
            "/api/v1/stations/CS1/commands/set_variables",
            {"variables": [{"component": "SmartChargingCtrlr", "variable": "Enabled", "value": "false"}]},
        ),
    ],
)
async def test_allocator_owned_commands_are_refused(
    gateway: Gateway, api: tuple[httpx.AsyncClient, list[Record]], path: str, body: dict[str, Any]
) -> None:
    http, sent = api
    c = await booted(gateway, "CP1")
    resp = await http.post(path, json=body)
    assert resp.status_code in (403, 422), resp.text
    assert "allocator" in resp.text
    await gateway.bus.flush()
    assert sent == []
    assert not any(
        call[2] in ("SetChargingProfile", "ClearChargingProfile", "ChangeConfiguration") for call in c.received_calls
    )
    await c.close()


@pytest.mark.parametrize(
    "query",
    [
        "?generation=9000000000000000000",
        "?command_key=profile/1/TxProfile/1",
        "?generation=99999999999999999999999",
        "?generation=1&command_key=x",
    ],
)
async def test_generation_and_command_key_are_refused(api: tuple[httpx.AsyncClient, list[Record]], query: str) -> None:
    http, sent = api
    resp = await http.post("/api/v1/stations/CP1/commands/get_configuration" + query, json={"keys": []})
    assert resp.status_code == 422 and "allocator" in resp.json()["detail"]
    assert sent == []


async def test_other_commands_still_pass(gateway: Gateway, api: tuple[httpx.AsyncClient, list[Record]]) -> None:
    http, sent = api
    c = await booted(gateway, "CP1", answers={"ChangeConfiguration": {"status": "Accepted"}})
    resp = await http.post(
        "/api/v1/stations/CP1/commands/change_configuration", json={"key": "HeartbeatInterval", "value": "60"}
    )
    assert resp.status_code == 200 and resp.json()["outcome"] == "COMMAND_OUTCOME_ACCEPTED"
    (cmd,) = [r for r in sent]
    assert cmd.key == "CP1"
    await c.close()


async def test_openapi_lists_no_ordering_parameters(api: tuple[httpx.AsyncClient, list[Record]]) -> None:
    http, _ = api
    spec = (await http.get("/openapi.json")).json()
    params = spec["paths"]["/api/v1/stations/{station_id}/commands/{action}"]["post"]["parameters"]
    assert {p["name"] for p in params} == {"station_id", "action", "timeout_s"}
