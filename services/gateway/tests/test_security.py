"""Security profiles 1 (Basic), 2 (TLS + Basic), 3 (mTLS, certificate CN = station id), with test
certificates generated here; passwords never reach the logs."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import logging
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gridcharge.gateway.adapters.credentials import hash_password, verify_password
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from .conftest import BOOT_16, Gateway, RawClient, start_gateway

PASSWORD = "s3cret-Passw0rd-1234"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: str,
    key: ec.EllipticCurvePrivateKey,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cp, kp = path.with_suffix(".crt"), path.with_suffix(".key")
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cp, kp


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("gridcharge test CA", ca_key, "gridcharge test CA", ca_key, ca=True)
    out: dict[str, Path] = {}
    out["ca"], _ = _write(d / "ca", ca, ca_key)
    for name, server in (("server", True), ("CP1", False), ("CP2", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        out[name], out[name + "_key"] = _write(
            d / name, _cert("127.0.0.1" if server else name, ca_key, "gridcharge test CA", key, server=server), key
        )
    creds = d / "credentials.yaml"
    creds.write_text(f'CP1: "{hash_password(PASSWORD, iterations=2000)}"\n')
    out["credentials"] = creds
    return out


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _client_ssl(pki: dict[str, Path], cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if cert:
        ctx.load_cert_chain(str(pki[cert]), str(pki[cert + "_key"]))
    return ctx


async def _boot(url: str, **kw: object) -> RawClient:
    ws = await connect(url, subprotocols=["ocpp1.6"], **kw)  # type: ignore[list-item, arg-type]
    c = RawClient(ws)
    res = await c.call("BootNotification", BOOT_16)
    assert res[2]["status"] == "Accepted"
    return c


@pytest.fixture
async def gw_factory() -> AsyncIterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for g in made:
        await g.service.stop()
        await g.bus.stop()


def test_password_hashing() -> None:
    h = hash_password("pw", iterations=1000)
    assert h.startswith("pbkdf2_sha256$1000$") and len(h.split("$")) == 4
    assert verify_password("pw", h) and not verify_password("px", h) and not verify_password("pw", "garbage")


async def test_profile_1_basic_auth(
    pki: dict[str, Path], gw_factory: list[Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # back-off after failures kept short here (tested on its own in test_failed_auth_backoff_and_lockout)
    gw = await start_gateway(
        security_profile=1,
        credentials_file=pki["credentials"],
        read_capabilities=False,
        auth_backoff_base_s=0.01,
        auth_backoff_max_s=0.05,
    )
    gw_factory.append(gw)
    url = gw.url + "CP1"
    for headers in ({}, _basic("CP1", "wrong-password-123"), _basic("CP2", PASSWORD), {"Authorization": "Basic !!"}):
        with pytest.raises(InvalidStatus) as exc:
            await connect(url, subprotocols=["ocpp1.6"], additional_headers=headers)  # type: ignore[list-item]
        assert exc.value.response.status_code == 401
        await asyncio.sleep(0.06)
    c = await _boot(url, additional_headers=_basic("CP1", PASSWORD))
    await c.close()
    c = await _boot(url, additional_headers=_basic("CP1", PASSWORD))  # cached verification path
    await c.close()
    assert PASSWORD not in caplog.text and "wrong-password-123" not in caplog.text


async def test_profile_2_tls_and_basic(pki: dict[str, Path], gw_factory: list[Gateway]) -> None:
    gw = await start_gateway(
        security_profile=2,
        credentials_file=pki["credentials"],
        tls_cert=pki["server"],
        tls_key=pki["server_key"],
        read_capabilities=False,
    )
    gw_factory.append(gw)
    url = gw.url.replace("ws://", "wss://") + "CP1"
    c = await _boot(url, ssl=_client_ssl(pki), additional_headers=_basic("CP1", PASSWORD))
    await c.close()
    with pytest.raises(InvalidStatus) as exc:
        await connect(url, subprotocols=["ocpp1.6"], ssl=_client_ssl(pki))  # type: ignore[list-item]
    assert exc.value.response.status_code == 401
    old = _client_ssl(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        await connect(
            url,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            ssl=old,
            additional_headers=_basic("CP1", PASSWORD),
        )
    with pytest.raises((InvalidMessage, OSError, TimeoutError)):  # plain ws to a TLS port fails
        await connect(gw.url + "CP1", subprotocols=["ocpp1.6"], open_timeout=3)  # type: ignore[list-item]


async def test_profile_3_mtls_cn_bound_to_station(pki: dict[str, Path], gw_factory: list[Gateway]) -> None:
    gw = await start_gateway(
        security_profile=3, tls_cert=pki["server"], tls_key=pki["server_key"], tls_ca=pki["ca"], read_capabilities=False
    )
    gw_factory.append(gw)
    base = gw.url.replace("ws://", "wss://")
    c = await _boot(base + "CP1", ssl=_client_ssl(pki, "CP1"))
    await c.close()
    with pytest.raises(InvalidStatus) as exc:  # CP2's certificate used for CP1
        await connect(base + "CP1", subprotocols=["ocpp1.6"], ssl=_client_ssl(pki, "CP2"))  # type: ignore[list-item]
    assert exc.value.response.status_code == 403
    with pytest.raises((ssl.SSLError, OSError, InvalidMessage, InvalidStatus)):  # no client certificate at all
        await connect(
            base + "CP1",
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            ssl=_client_ssl(pki),
            open_timeout=5,
        )
