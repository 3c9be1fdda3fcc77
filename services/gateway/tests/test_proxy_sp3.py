"""Proxy mode, security profile 3 towards the upstream: a TLS client certificate per station
(`GRIDCHARGE_UPSTREAM_CLIENT_CERTS_DIR/<station_id>.crt|.key`, CN = station id, no password).

Settings: what profile 3 needs and refuses, one line naming the variable or file and the problem (missing
file, key not the certificate's, expired, another station's certificate, encrypted key), never key
material. On the wire: an upstream that requires client certificates (ssl.CERT_REQUIRED) and checks CN =
the station id of the path sees the station's own certificate and no Authorization header; a certificate
file swapped for another station's after start-up is refused by gridcharge before any connection (counted).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from http import HTTPStatus
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gridcharge.gateway.adapters.client_certs import ClientCertError, ClientCerts
from gridcharge.gateway.config import GatewaySettings, check_gateway_files
from gridcharge.gateway.service import upstream_client_certs
from gridcharge.shared.errors import ConfigError
from prometheus_client import REGISTRY
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from .conftest import BOOT_16, STATIONS, open_client, start_gateway

KEY_MARK = b"PRIVATE KEY"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and client certificates by CN."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(_name("proxy test CA"))
            .issuer_name(_name("proxy test CA"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = root / "ca.crt"
        self.ca_file.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self.issue(root / "server", "127.0.0.1", server=True)

    def issue(
        self,
        path: Path,
        cn: str,
        *,
        server: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        password: bytes | None = None,
    ) -> tuple[Path, Path]:
        now = dt.datetime.now(dt.UTC)
        key = key or ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=20))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = b.sign(self.ca_key, hashes.SHA256())
        path.parent.mkdir(parents=True, exist_ok=True)
        cp, kp = path.with_name(path.name + ".crt"), path.with_name(path.name + ".key")
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
        return cp, kp

    def station_dir(self, ids: list[str], name: str = "client-certs") -> Path:
        d = self.root / name
        d.mkdir(exist_ok=True)
        for sid in ids:
            self.issue(d / sid, sid)
        return d


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _sp3(certs: Path | None, **env: str) -> GatewaySettings:
    base = {"GRIDCHARGE_UPSTREAM_URL": "wss://csms.example.com/ocpp", "GRIDCHARGE_UPSTREAM_SECURITY_PROFILE": "3"}
    if certs is not None:
        base["GRIDCHARGE_UPSTREAM_CLIENT_CERTS_DIR"] = str(certs)
    return GatewaySettings.from_env({**base, **env})


def test_profile_3_from_env_with_a_mounted_directory(pki: Pki) -> None:
    st = _sp3(pki.station_dir(["CP1", "CP2"]))
    check_gateway_files(st)
    assert st.upstream_security_profile == 3
    certs = upstream_client_certs(st, ["CP1", "CP2"])
    assert certs is not None and isinstance(certs.context("CP1"), ssl.SSLContext)


@pytest.mark.parametrize(
    ("env", "key", "problem"),
    [
        ({}, "GRIDCHARGE_UPSTREAM_CLIENT_CERTS_DIR", "required by GRIDCHARGE_UPSTREAM_SECURITY_PROFILE=3"),
        ({"GRIDCHARGE_UPSTREAM_URL": "ws://csms/ocpp"}, "GRIDCHARGE_UPSTREAM_URL", "does not fit"),
        (
            {"GRIDCHARGE_UPSTREAM_PASSWORDS_FILE": "/etc/pw.yaml"},
            "GRIDCHARGE_UPSTREAM_PASSWORDS_FILE",
            "sends no password",
        ),
        (
            {"GRIDCHARGE_UPSTREAM_SECURITY_PROFILE": "0", "GRIDCHARGE_UPSTREAM_URL": "ws://csms/ocpp"},
            "GRIDCHARGE_UPSTREAM_CLIENT_CERTS_DIR",
            "would ignore it",
        ),
    ],
)
def test_bad_profile_3_settings_are_one_line(pki: Pki, env: dict[str, str], key: str, problem: str) -> None:
    certs = None if key == "GRIDCHARGE_UPSTREAM_CLIENT_CERTS_DIR" and "required" in problem else pki.station_dir([])
    if "PASSWORDS" in key:
        (pki.root / "pw.yaml").write_text("CP1: x\n")
        env = {"GRIDCHARGE_UPSTREAM_PASSWORDS_FILE": str(pki.root / "pw.yaml")}
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(certs, **env))
    text = str(err.value)
    assert key in text and problem in text and "\n" not in text, text


@pytest.mark.parametrize(("station", "upstream", "refused"), [(3, 2, True), (2, 1, True), (2, 2, False), (0, 3, False)])
def test_the_upstream_leg_keeps_at_least_the_stations_profile(
    pki: Pki, station: int, upstream: int, refused: bool
) -> None:
    """A station that connects with profile N is relayed with at least N (no clear text or password
    behind a station that was given TLS or a certificate)."""
    (pki.root / "pw.yaml").write_text("CP1: upstream-pw\n")
    env = {
        "GRIDCHARGE_UPSTREAM_URL": ("wss" if upstream >= 2 else "ws") + "://csms.example.com/ocpp",
        "GRIDCHARGE_UPSTREAM_SECURITY_PROFILE": str(upstream),
        **({"GRIDCHARGE_UPSTREAM_PASSWORDS_FILE": str(pki.root / "pw.yaml")} if upstream in (1, 2) else {}),
        **({"GRIDCHARGE_UPSTREAM_CLIENT_CERTS_DIR": str(pki.station_dir([]))} if upstream == 3 else {}),
    }
    st = GatewaySettings.from_env(env)
    st = st.model_copy(update={"security_profile": station})
    from gridcharge.gateway.config import check_upstream

    if refused:
        with pytest.raises(ConfigError, match="below the stations' GRIDCHARGE_SECURITY_PROFILE"):
            check_upstream(st)
    else:
        check_upstream(st)


def _assert_one_line(err: pytest.ExceptionInfo[ConfigError], file: Path, problem: str) -> None:
    text = str(err.value)
    assert "GRIDCHARGE_UPSTREAM_CLIENT_CERTS_DIR" in text and str(file) in text and problem in text, text
    assert "\n" not in text and "BEGIN" not in text


def test_a_missing_key_a_foreign_key_and_a_missing_station_name_the_file(pki: Pki) -> None:
    d = pki.station_dir(["CP1", "CP2"])
    (d / "CP2.key").unlink()
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(d))
    _assert_one_line(err, d / "CP2.key", "missing")
    # CP2's key is CP1's: not the certificate's
    (d / "CP2.key").write_bytes((d / "CP1.key").read_bytes())
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(d))
    _assert_one_line(err, d / "CP2.key", "does not match the certificate CP2.crt")
    pki.issue(d / "CP2", "CP2")
    check_gateway_files(_sp3(d))
    # a topology station without files stops start-up too
    with pytest.raises(ConfigError) as err:
        upstream_client_certs(_sp3(d), ["CP1", "CP2", "CP3"])
    _assert_one_line(err, d / "CP3.crt", "missing")


def test_an_expired_a_future_and_another_stations_certificate_name_the_file(pki: Pki) -> None:
    d = pki.station_dir(["CP1"])
    now = dt.datetime.now(dt.UTC)
    pki.issue(d / "CP1", "CP1", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(d))
    _assert_one_line(err, d / "CP1.crt", "expired at")
    pki.issue(d / "CP1", "CP1", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=10))
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(d))
    _assert_one_line(err, d / "CP1.crt", "not valid before")
    pki.issue(d / "CP1", "CP2")  # CP2's certificate under CP1's name
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(d))
    _assert_one_line(err, d / "CP1.crt", "CN is CP2, not the station id CP1")


def test_an_encrypted_key_and_garbage_are_refused_without_their_content(pki: Pki) -> None:
    d = pki.station_dir(["CP1"])
    pki.issue(d / "CP1", "CP1", password=b"hunter2-passphrase")
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(d))
    _assert_one_line(err, d / "CP1.key", "encrypted private key")
    pki.issue(d / "CP1", "CP1")
    (d / "CP1.key").write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(d))
    _assert_one_line(err, d / "CP1.key", "not a PEM private key")
    assert "c2VjcmV0" not in str(err.value)
    (d / "CP1.crt").write_text("hello")
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(d))
    _assert_one_line(err, d / "CP1.crt", "not a PEM certificate")
    with pytest.raises(ConfigError) as err:
        check_gateway_files(_sp3(pki.root / "nope"))
    assert "not a readable directory" in str(err.value)


def test_a_certificate_swapped_after_start_is_refused_before_it_is_presented(pki: Pki) -> None:
    d = pki.station_dir(["CP1", "CP2"])
    certs = ClientCerts(d, pki.ca_file)
    first = certs.context("CP1")
    assert certs.context("CP1") is first  # cached while the files are unchanged
    (d / "CP1.crt").write_bytes((d / "CP2.crt").read_bytes())
    (d / "CP1.key").write_bytes((d / "CP2.key").read_bytes())
    with pytest.raises(ClientCertError) as err:
        certs.context("CP1")
    assert err.value.path == d / "CP1.crt" and "CN is CP2" in err.value.problem
    pki.issue(d / "CP1", "CP1")  # the renewed one (a Secret update) is used without a restart
    assert certs.context("CP1") is not first


# ---- on the wire -------------------------------------------------------------------------------------


class MtlsUpstream:
    """An upstream that requires a client certificate from its CA and its CN = the station id of the path."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.seen: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.port = 0
        self.connections: list[ServerConnection] = []

    def tls(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.pki.server_cert), str(self.pki.server_key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(self.pki.ca_file))
        return ctx

    async def check(self, connection: ServerConnection, request: Request) -> Response | None:
        station = request.path.rstrip("/").split("/")[-1]
        obj = connection.transport.get_extra_info("ssl_object")
        cert = obj.getpeercert() if obj is not None else None
        cn = next((v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"), None)
        if cn != station:
            self.refused.append(station)
            return connection.respond(HTTPStatus.FORBIDDEN, "Forbidden\n")
        self.seen.append({"station": station, "cn": cn, "authorization": request.headers.get("Authorization")})
        return None

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] == 2 and msg[2] == "BootNotification":
                await ws.send(
                    json.dumps(
                        [3, msg[1], {"status": "Accepted", "interval": 77, "currentTime": "2030-01-01T00:00:00.000Z"}]
                    )
                )
            elif msg[0] == 2 and msg[2] == "Heartbeat":
                await ws.send(json.dumps([3, msg[1], {"currentTime": "2030-01-01T00:00:00.000Z"}]))


@pytest.fixture
async def mtls(pki: Pki) -> AsyncIterator[MtlsUpstream]:
    up = MtlsUpstream(pki)
    server = await serve(
        up.handler,
        "127.0.0.1",
        0,
        ssl=up.tls(),
        process_request=up.check,
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
    )
    up.port = int(next(iter(server.sockets)).getsockname()[1])
    yield up
    server.close()


def _failures(reason: str) -> float:
    return REGISTRY.get_sample_value("gridcharge_gateway_upstream_connect_failures_total", {"reason": reason}) or 0.0


async def test_each_station_presents_its_own_certificate_and_no_password(pki: Pki, mtls: MtlsUpstream) -> None:
    d = pki.station_dir(STATIONS)
    gw = await start_gateway(
        upstream_url=f"wss://127.0.0.1:{mtls.port}/csms",
        upstream_security_profile=3,
        upstream_client_certs_dir=d,
        upstream_ca_file=pki.ca_file,
        upstream_connect_timeout_s=2.0,
        upstream_backoff_max_s=1.0,
        read_capabilities=False,
    )
    try:
        c1 = await open_client(gw, "CP1")
        res = await c1.call("BootNotification", BOOT_16, timeout=10)
        assert res[2]["interval"] == 77  # the upstream's answer: it accepted CP1's certificate
        c2 = await open_client(gw, "CP2")
        res = await c2.call("BootNotification", BOOT_16, timeout=10)
        assert res[2]["interval"] == 77
        assert sorted((s["station"], s["cn"], s["authorization"]) for s in mtls.seen) == [
            ("CP1", "CP1", None),
            ("CP2", "CP2", None),
        ]
        # CP1's files are replaced by CP2's (a wrong Secret update): never presented for CP1
        before = _failures("certificate")
        (d / "CP1.crt").write_bytes((d / "CP2.crt").read_bytes())
        (d / "CP1.key").write_bytes((d / "CP2.key").read_bytes())
        for ws in list(mtls.connections):
            if ws.request is not None and ws.request.path.endswith("/CP1"):
                await ws.close()
        await asyncio.sleep(2.5)
        assert _failures("certificate") > before
        assert [s["station"] for s in mtls.seen].count("CP1") == 1 and mtls.refused == []
        hb = await c1.call("Heartbeat", {}, timeout=10)
        assert not hb[2]["currentTime"].startswith("2030")  # served locally meanwhile
        await c1.close()
        await c2.close()
    finally:
        await gw.service.stop()
        await gw.bus.stop()


async def test_the_upstream_refuses_a_certificate_from_a_ca_it_does_not_trust(pki: Pki, mtls: MtlsUpstream) -> None:
    """gridcharge checks its certificates' names and dates, not whom the upstream trusts: a certificate from
    another CA fails the upstream's TLS handshake, which gridcharge counts; the station is served locally."""
    other = Pki(pki.root / "other-ca")
    d = other.station_dir(STATIONS)
    before = _failures("tls") + _failures("handshake")
    gw = await start_gateway(
        upstream_url=f"wss://127.0.0.1:{mtls.port}/csms",
        upstream_security_profile=3,
        upstream_client_certs_dir=d,
        upstream_ca_file=pki.ca_file,
        upstream_connect_timeout_s=2.0,
        read_capabilities=False,
    )
    try:
        c1 = await open_client(gw, "CP1")
        res = await c1.call("BootNotification", BOOT_16, timeout=10)
        assert res[2]["interval"] == 300  # gridcharge's own answer
        assert mtls.seen == []
        # TLS 1.3 (the default here) reports the upstream's refusal of a client certificate as a connection
        # closed before the HTTP answer ("handshake"); TLS 1.2 as a TLS alert ("tls")
        assert _failures("tls") + _failures("handshake") > before
        await c1.close()
    finally:
        await gw.service.stop()
        await gw.bus.stop()
