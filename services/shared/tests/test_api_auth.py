"""Operator API authentication and audit at the shared HTTP edge (#12.7).

Bearer tokens (hashed file + env), OIDC JWTs (RS256/ES256 against a JWKS file or URL), roles (GET = read-only,
changes = operator), secure default without credentials, audit events on the bus, ops port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, FastAPI, Request
from gridcharge.audit.v1 import audit_pb2
from gridcharge.shared import auth as auth_mod
from gridcharge.shared.audit import AuditSink, note_change
from gridcharge.shared.auth import ApiAuth, token_digest
from gridcharge.shared.bus.base import Record
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.clock import RealClock
from gridcharge.shared.config import Settings
from gridcharge.shared.contracts import AUDIT_EVENTS, decode
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.http import Health, HttpServer, create_app
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import Host
from gridcharge.shared.store.memory import MemoryStore

OPERATOR = "operator-token-for-tests-000000000000"
READER = "reader-token-for-tests-0000000000000000"
OPERATOR_ENV = f"ops:operator:{OPERATOR}"
ISSUER, AUDIENCE = "https://idp.example.test/realms/grid", "gridcharge-api"


def router(state: dict[str, Any]) -> APIRouter:
    r = APIRouter(prefix="/api/v1")

    @r.get("/thing")
    def get_thing() -> dict[str, Any]:
        return state

    @r.put("/thing")
    async def put_thing(body: dict[str, Any], request: Request) -> dict[str, Any]:
        before = dict(state)
        state.update(body)
        note_change(request, "thing", before, dict(state))
        return state

    return r


def client(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.1.2.3", 5555)), base_url="http://t", headers=headers
    )


# ------------------------------------------------------------------------------------------ default


async def test_without_credentials_reads_are_open_and_changes_refused() -> None:
    state: dict[str, Any] = {"limit": 1}
    app = create_app("t", Health(), [router(state)])
    async with client(app) as c:
        assert (await c.get("/api/v1/thing")).status_code == 200
        r = await c.put("/api/v1/thing", json={"limit": 0})
        assert r.status_code == 403 and "no API credentials" in r.json()["detail"]
        assert state == {"limit": 1}
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await c.get(path)).status_code == 200, path


async def test_open_access_is_explicit() -> None:
    state: dict[str, Any] = {"limit": 1}
    app = create_app("t", Health(), [router(state)], auth=ApiAuth.from_settings(Settings(api_open_access=True)))
    async with client(app) as c:
        assert (await c.put("/api/v1/thing", json={"limit": 0})).status_code == 200


# ------------------------------------------------------------------------------------------ tokens


async def test_token_roles(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"ops: {{role: operator, sha256: {token_digest(OPERATOR)}}}\n"
        f"grafana: {{role: read-only, sha256: {token_digest(READER)}}}\n"
    )
    assert OPERATOR not in tokens.read_text()  # only hashes are stored
    state: dict[str, Any] = {"limit": 1}
    app = create_app("t", Health(), [router(state)], auth=ApiAuth.from_settings(Settings(api_tokens_file=tokens)))
    async with (
        client(app) as anon,
        client(app, READER) as reader,
        client(app, OPERATOR) as op,
        client(app, "wrong-token-wrong-token-wrong") as bad,
    ):
        r = await anon.get("/api/v1/thing")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert (await bad.get("/api/v1/thing")).status_code == 401
        assert (await reader.get("/api/v1/thing")).status_code == 200
        r = await reader.put("/api/v1/thing", json={"limit": 0})
        assert r.status_code == 403 and "needs operator" in r.json()["detail"]
        assert (await op.put("/api/v1/thing", json={"limit": 0})).status_code == 200
        assert state == {"limit": 0}
        assert (await anon.get("/healthz")).status_code == 200
        r = await anon.get("/api/v1/thing", headers={"Authorization": f"Basic {OPERATOR}"})
        assert r.status_code == 401


async def test_token_file_is_reloaded_when_the_secret_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_mod, "RELOAD_CHECK_S", 0.0)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"ops: {{role: operator, sha256: {token_digest(OPERATOR)}}}\n")
    auth = ApiAuth.from_settings(Settings(api_tokens_file=tokens))
    assert not isinstance(await auth.authenticate("PUT", f"Bearer {OPERATOR}"), auth_mod.Denied)
    tokens.write_text(f"ops2: {{role: operator, sha256: {token_digest(READER)}}}\n")
    os.utime(tokens, (time.time() + 5, time.time() + 5))
    assert isinstance(await auth.authenticate("PUT", f"Bearer {OPERATOR}"), auth_mod.Denied)
    assert not isinstance(await auth.authenticate("PUT", f"Bearer {READER}"), auth_mod.Denied)
    tokens.write_text("garbage: [")  # a broken update keeps the last good tokens
    os.utime(tokens, (time.time() + 10, time.time() + 10))
    assert not isinstance(await auth.authenticate("PUT", f"Bearer {READER}"), auth_mod.Denied)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("ops: {role: admin, sha256: " + "a" * 64 + "}\n", "role must be one of"),
        ("ops: {role: operator, sha256: abc}\n", "SHA-256"),
        ("ops: {role: operator, token: plain}\n", "expected {role"),
        ("[1, 2]\n", "mapping"),
    ],
)
def test_bad_token_file_is_one_line(tmp_path: Path, content: str, problem: str) -> None:
    p = tmp_path / "tokens.yaml"
    p.write_text(content)
    with pytest.raises(ConfigError) as err:
        ApiAuth.from_settings(Settings(api_tokens_file=p))
    assert problem in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ops:operator:short", "shorter than"),
        ("ops:root:" + "x" * 40, "role must be one of"),
        ("nocolons", "name:role"),
    ],
)
def test_bad_token_env(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ApiAuth.from_settings(Settings.from_env({"GRIDCHARGE_API_TOKENS": value}))


# ------------------------------------------------------------------------------------------ OIDC


def _keys() -> dict[str, Any]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    rsa_jwk.update(kid="rsa-1", use="sig", alg="RS256")
    ec_jwk.update(kid="ec-1", use="sig", alg="ES256")
    return {"rsa": rsa_key, "ec": ec_key, "jwks": {"keys": [rsa_jwk, ec_jwk]}}


KEYS = _keys()


def token(alg: str = "RS256", kid: str = "rsa-1", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "exp": now + 300,
        "iat": now,
        "preferred_username": "alice",
        "realm_access": {"roles": ["gridcharge-operator"]},
        **claims,
    }
    key = KEYS["rsa"] if alg.startswith("RS") else KEYS["ec"]
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})


def oidc_settings(jwks: Path | None = None, url: str = "") -> Settings:
    return Settings(
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_file=jwks,
        oidc_jwks_url=url,
        oidc_roles_claim="realm_access.roles",
        oidc_role_map="gridcharge-operator=operator,gridcharge-viewer=read-only",
    )


def _hs256(claims: dict[str, Any], key: bytes, kid: str) -> str:
    """A token HMAC-signed with `key` by hand (PyJWT itself refuses a PEM key as an HMAC secret)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "." + b64(json.dumps(claims).encode())
    )
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    p = tmp_path / "jwks.json"
    p.write_text(json.dumps(KEYS["jwks"]))
    return p


async def test_oidc_tokens(jwks_file: Path) -> None:
    auth = ApiAuth.from_settings(oidc_settings(jwks_file))

    async def check(tok: str, method: str = "PUT") -> Any:
        return await auth.authenticate(method, f"Bearer {tok}")

    p = await check(token())
    assert isinstance(p, auth_mod.Principal) and (p.subject, p.name, p.role, p.method) == (
        "user-42",
        "alice",
        "operator",
        "oidc",
    )
    assert isinstance(await check(token("ES256", "ec-1")), auth_mod.Principal)
    viewer = token(realm_access={"roles": ["gridcharge-viewer"]})
    assert isinstance(await check(viewer, "GET"), auth_mod.Principal)
    assert (await check(viewer)).status == 403
    assert (await check(token(realm_access={"roles": ["other"]}), "GET")).status == 403
    for bad in (
        token(iss="https://evil.example"),
        token(aud="another-client"),
        token(exp=int(time.time()) - 3600),
        token(kid="unknown"),
        token(sub=None),
    ):
        d = await check(bad)
        assert isinstance(d, auth_mod.Denied) and d.status == 401, d
    # alg confusion: an HS256 token keyed with the (public) RSA key must not pass, nor an unsigned one
    pem = (
        KEYS["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "x",
        "exp": int(time.time()) + 60,
        "realm_access": {"roles": ["gridcharge-operator"]},
    }
    forged = _hs256(claims, pem, kid="rsa-1")
    assert (await check(forged)).status == 401
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": "rsa-1"})
    assert (await check(unsigned)).status == 401
    tampered = token()[:-4] + "AAAA"
    assert (await check(tampered)).status == 401


async def test_oidc_jwks_from_url_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    fetches = []
    app = FastAPI()

    @app.get("/jwks")
    def jwks() -> dict[str, Any]:
        fetches.append(time.monotonic())
        return dict(KEYS["jwks"])

    server = HttpServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        auth = ApiAuth.from_settings(oidc_settings(url=f"http://127.0.0.1:{server.port}/jwks"))
        for _ in range(5):
            assert isinstance(await auth.authenticate("PUT", f"Bearer {token()}"), auth_mod.Principal)
        assert len(fetches) == 1
        await auth.authenticate("PUT", f"Bearer {token(kid='rotated')}")  # unknown kid: no refetch storm
        assert len(fetches) == 1
        monkeypatch.setattr(auth_mod, "MIN_REFETCH_S", 0.0)
        await auth.authenticate("PUT", f"Bearer {token(kid='rotated')}")
        assert len(fetches) == 2
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"oidc_issuer": ISSUER, "oidc_jwks_url": "https://idp/jwks"}, "GRIDCHARGE_OIDC_AUDIENCE"),
        ({"oidc_issuer": ISSUER, "oidc_audience": "a"}, "GRIDCHARGE_OIDC_JWKS_URL"),
        (
            {"oidc_issuer": ISSUER, "oidc_audience": "a", "oidc_jwks_url": "http://idp.example/jwks"},
            "GRIDCHARGE_OIDC_JWKS_URL",
        ),
        (
            {
                "oidc_issuer": ISSUER,
                "oidc_audience": "a",
                "oidc_jwks_url": "https://idp/jwks",
                "oidc_algorithms": "HS256",
            },
            "GRIDCHARGE_OIDC_ALGORITHMS",
        ),
        ({"oidc_audience": "a"}, "GRIDCHARGE_OIDC_ISSUER"),
        (
            {"oidc_issuer": ISSUER, "oidc_audience": "a", "oidc_jwks_url": "https://idp/jwks", "oidc_role_map": "x"},
            "GRIDCHARGE_OIDC_ROLE_MAP",
        ),
    ],
)
def test_oidc_misconfiguration_is_refused(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        ApiAuth.from_settings(Settings(**settings))
    assert key in str(err.value)


# ------------------------------------------------------------------------------------------ audit


async def test_every_change_is_audited_on_the_bus_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus()
    await bus.start()
    events: list[audit_pb2.AuditEvent] = []

    async def on_audit(rec: Record) -> None:
        events.append(decode(audit_pb2.AuditEvent, rec.value))

    await bus.subscribe([AUDIT_EVENTS.name], "audit-test", on_audit)
    state: dict[str, Any] = {"limit": 1}
    app = create_app(
        "t",
        Health(),
        [router(state)],
        audit=AuditSink(bus, "allocation", "allocation/a"),
        auth=ApiAuth.with_tokens(ops=("operator", OPERATOR), grafana=("read-only", READER)),
    )
    caplog.set_level("INFO", "gridcharge.audit")
    async with client(app, OPERATOR) as op, client(app, READER) as reader:
        await op.get("/api/v1/thing")  # reads are not audited
        await op.put("/api/v1/thing?why=test", json={"limit": 5})
        await op.put("/api/v1/thing", content=b"not json", headers={"content-type": "application/json"})
        await reader.put("/api/v1/thing", json={"limit": 9})  # refused before it ran: no change
    await bus.flush()
    await bus.stop()
    assert [e.status_code for e in events] == [200, 422]
    e = events[0]
    assert (e.actor.subject, e.actor.role, e.actor.method, e.actor.client_address) == (
        "ops",
        "operator",
        "token",
        "10.1.2.3",
    )
    assert (e.service, e.method, e.path, e.query, e.target) == (
        "allocation",
        "PUT",
        "/api/v1/thing",
        "why=test",
        "thing",
    )
    assert json.loads(e.request_json) == {"limit": 5}
    assert json.loads(e.before_json) == {"limit": 1} and json.loads(e.after_json) == {"limit": 5}
    assert e.meta.producer == "allocation/a" and e.meta.produced_at.seconds > 0
    logged = [r for r in caplog.records if r.name == "gridcharge.audit"]
    assert len(logged) == 2 and logged[0].__dict__["actor"] == "ops"


async def test_host_serves_probes_on_the_ops_port_only() -> None:
    clock = RealClock()
    settings = Settings(http_host="127.0.0.1", http_port=0, ops_port=0, api_tokens=OPERATOR_ENV)
    rt = Runtime(settings=settings, bus=MemoryBus(), store=MemoryStore(clock), clock=clock)
    host = Host(rt, [])
    await host.start()
    try:
        assert host.http is not None and host.ops is not None and host.http.port != host.ops.port
        async with httpx.AsyncClient() as c:
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await c.get(f"http://127.0.0.1:{host.ops.port}{path}")).status_code == 200
                assert (await c.get(f"http://127.0.0.1:{host.http.port}{path}")).status_code in (401, 404)
            assert (await c.get(f"http://127.0.0.1:{host.ops.port}/openapi.json")).status_code == 404
    finally:
        await host.stop()
