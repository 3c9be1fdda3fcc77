"""Values the allocation API must refuse with 422 instead of accepting them and failing later (#15.6).

A departure of 0001-01-01T00:00:00+14:00 was accepted and then stopped plan publishing for every session,
every cycle (converting it to UTC or to a protobuf Timestamp overflows); valid_from/valid_to at year 1 or
9999 answered 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from gridcharge.plan.v1 import plan_pb2
from gridcharge.shared import contracts as C
from gridcharge.shared.auth import ApiAuth
from gridcharge.shared.bus.base import Record
from gridcharge.shared.http import create_app

from .test_service import START, Env, connect_all, env, start_tx  # noqa: F401 (env is a fixture)

TOKEN = "allocation-validation-operator-token-0"


@pytest.fixture
async def api(env: Env) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    app = create_app("t", env.rt.health, env.svc.routers, auth=ApiAuth.with_tokens(ops=("operator", TOKEN)))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as c:
        yield c


@pytest.mark.parametrize(
    "departure",
    [
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-14:00",
        "9999-12-31T23:59:59Z",
        "1900-01-01T00:00:00Z",
        "2200-01-01T00:00:00Z",
        "2026-06-01T18:00:00",
    ],
)
async def test_out_of_range_departure_is_422_and_plans_keep_coming(
    env: Env,  # noqa: F811
    api: httpx.AsyncClient,
    departure: str,
) -> None:
    plans: list[plan_pb2.SessionPlan] = []

    async def on_plan(rec: Record) -> None:
        plans.append(C.decode(plan_pb2.SessionPlan, rec.value))

    await env.bus.subscribe([C.SESSION_PLANS.name], "plans", on_plan)
    await connect_all(env)
    await start_tx(env, "cs1", "7")
    await env.run(3)
    r = await api.put("/allocation/sessions/cs1/1/7/preferences", json={"departure": departure})
    assert r.status_code == 422, r.text
    plans.clear()
    await env.run(120)
    assert plans, "plan publishing stopped"
    ok = (START + timedelta(hours=3)).isoformat()
    assert (await api.put("/allocation/sessions/cs1/1/7/preferences", json={"departure": ok})).status_code == 200


@pytest.mark.parametrize(
    "window",
    [
        {"valid_from": "0001-01-01T00:00:00Z"},
        {"valid_to": "9999-12-31T23:59:59Z"},
        {"valid_from": "0001-01-01T00:00:00+14:00", "valid_to": "9999-12-31T23:59:59-14:00"},
        {"valid_to": "2100-01-01T00:00:01Z"},
    ],
)
async def test_out_of_range_limit_window_is_422(api: httpx.AsyncClient, window: dict[str, Any]) -> None:
    r = await api.post("/allocation/limits", json={"node_id": "site", "limit_w": [0, 0, 0], **window})
    assert r.status_code == 422, r.text
    assert (await api.get("/allocation/limits")).json()["external_limits"] == []


@pytest.mark.parametrize("first", ["NaN", "Infinity", "1e400", "-1"])
async def test_non_finite_or_negative_limit_is_422(api: httpx.AsyncClient, first: str) -> None:
    """Python's JSON parser reads NaN/Infinity/1e400; FastAPI's own 422 could not echo them back (500)."""
    body = '{"node_id": "site", "limit_w": [' + first + ", 0, 0]}"
    r = await api.post("/allocation/limits", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
