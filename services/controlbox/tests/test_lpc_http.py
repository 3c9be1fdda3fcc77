"""The LPC HTTP input against a hostile client: credentials, roles, bounds, bad JSON, large bodies, wrong mode."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from gridcharge.controlbox.adapters.lpc import LpcFile
from gridcharge.shared.auth import ApiAuth
from gridcharge.shared.http import EdgeLimits, create_app

from .conftest import Env, EnvFactory

GUARD = "dso-energy-guard-token-0000000000000"
JSON = {"content-type": "application/json"}
VIEWER = "viewer-token-00000000000000000000000"


async def client_for(env: Env) -> httpx.AsyncClient:
    auth = ApiAuth.with_tokens(guard=("operator", GUARD), viewer=("read-only", VIEWER))
    app = create_app("t", env.rt.health, env.svc.routers, auth=auth, limits=EdgeLimits(max_body_bytes=4096))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
async def env(make_env: EnvFactory) -> Env:
    e: Env = await make_env(controlbox_relay="off", controlbox_lpc="http")
    return e


@pytest.fixture
async def api(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(env) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_writes_need_the_operator_role(api: httpx.AsyncClient, env: Env) -> None:
    body = {"active": True, "limit_w": 5000}
    assert (await api.post("/api/controlbox/lpc", json=body)).status_code == 401
    assert (await api.post("/api/controlbox/lpc", json=body, headers=bearer("wrong-token"))).status_code == 401
    assert (await api.post("/api/controlbox/lpc", json=body, headers=bearer(VIEWER))).status_code == 403
    assert (await api.post("/api/controlbox/heartbeat", headers=bearer(VIEWER))).status_code == 403
    assert not env.svc.status()["dimmed"]
    r = await api.get("/api/controlbox/status", headers=bearer(VIEWER))
    assert r.status_code == 200 and r.json()["lpc"] == "init"
    r = await api.post("/api/controlbox/lpc", json=body, headers=bearer(GUARD))
    assert r.status_code == 200 and r.json()["limit_w"] == 5000 and r.json()["reason"] == "lpc"


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"null",
        b"[]",
        b'"on"',
        b'{"active": true}',
        b'{"active": "yes please"}',
        b'{"active": true, "limit_w": -1}',
        b'{"active": true, "limit_w": 1e12}',
        b'{"active": true, "limit_w": NaN}',
        b'{"active": true, "limit_w": Infinity}',
        b'{"active": true, "limit_w": 5000, "duration_s": -5}',
        b'{"active": true, "limit_w": 5000, "duration_s": 1e300}',
        b'{"active": true, "limit_w": 5000, "failsafe_limit_w": "4200", "x": 1}',
        b'{"active": true, "limit_w": {"nested": [1, 2, 3]}}',
        '{"active": true, "limit_w": "\u00a7\u00a7"}'.encode(),
        b"\xff\xfe\x00garbage",
    ],
)
async def test_bad_bodies_are_422_and_change_nothing(api: httpx.AsyncClient, env: Env, raw: bytes) -> None:
    r = await api.post("/api/controlbox/lpc", content=raw, headers={**bearer(GUARD), **JSON})
    assert r.status_code == 422, (raw, r.status_code, r.text)
    assert not env.svc.status()["dimmed"] and env.svc.state.heartbeat_at is None


async def test_large_body_is_413(api: httpx.AsyncClient, env: Env) -> None:
    big = b'{"active": true, "limit_w": 5000, "pad": "' + b"x" * 10_000 + b'"}'
    r = await api.post("/api/controlbox/lpc", content=big, headers={**bearer(GUARD), **JSON})
    assert r.status_code == 413
    assert not env.svc.status()["dimmed"]


async def test_below_minimum_is_raised_to_it_and_failsafe_values_are_clamped(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/api/controlbox/lpc",
        headers=bearer(GUARD),
        json={"active": True, "limit_w": 0, "failsafe_limit_w": 100, "failsafe_duration_s": 60},
    )
    assert r.status_code == 200
    st = r.json()
    assert st["limit_w"] == 4200 and st["failsafe_duration_s"] == 7200


async def test_http_input_refused_when_lpc_is_not_http(make_env: EnvFactory) -> None:
    env = await make_env(controlbox_relay="modbus", controlbox_lpc="off")
    async with await client_for(env) as api:
        r = await api.post("/api/controlbox/lpc", json={"active": True, "limit_w": 5000}, headers=bearer(GUARD))
        assert r.status_code == 409
        assert (await api.post("/api/controlbox/heartbeat", headers=bearer(GUARD))).status_code == 409


def test_lpc_file_bounds_and_changes(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "lpc.json"
    f = LpcFile(p)
    assert f.poll() is None  # no file yet
    p.write_text('{"active": true, "limit_w": 6000, "duration_s": 900}')
    w = f.poll()
    assert w is not None and w.limit_w == 6000
    assert f.poll() is None  # unchanged
    p.write_text('{"active": true, "limit_w": -3}')
    with pytest.raises(ValueError, match="limit_w"):
        f.poll()
    p.write_bytes(b"{" + b" " * 5000 + b"}")
    with pytest.raises(ValueError, match="larger than"):
        f.poll()
    p.write_bytes(b"\x00\xff not json")
    with pytest.raises(ValueError):
        f.poll()
