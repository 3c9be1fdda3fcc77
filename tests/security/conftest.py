"""Helpers of the control-plane security tests: test PKI, tokens, JWKS, and a real `gridcharge serve` process.

The processes run the in-process bus (`--bus memory`), so these tests need neither Kafka nor Redis; every
port is a free loopback port.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gridcharge.gateway.adapters.credentials import hash_password

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
GRIDCHARGE = str(Path(sys.executable).with_name("gridcharge"))
OPERATOR_TOKEN = "sec-test-operator-token-0123456789abcdef"
READER_TOKEN = "sec-test-reader-token-0123456789abcdef00"
STATION_PASSWORD = "station-Passw0rd-1234"
TOPOLOGY = """\
site: {id: sec-site, timezone: Europe/Berlin, latitude: 52.5, longitude: 13.4}
nodes:
  - {id: trafo, kind: transformer, limit_a: [400, 400, 400], metered: true}
  - {id: feeder, kind: feeder, parent: trafo, limit_a: [200, 200, 200]}
stations:
  - {id: CP1, node: feeder, ocpp: "1.6", max_current_a: 32, fallback_current_a: 6}
  - {id: CP2, node: feeder, ocpp: "1.6", max_current_a: 32, fallback_current_a: 6}
"""
WEATHER = REPO / "services/forecasting/src/gridcharge/forecasting/data/backtest/weather_forecast.json"


def token_digest(token: str) -> str:
    """What `gridcharge api-token` writes into the tokens file (computed here so these process-level tests also
    run against older code, to show what they catch)."""
    return hashlib.sha256(token.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without GRIDCHARGE_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDCHARGE_")}
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------ PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_pki(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 (PEM files), plus a station credentials file."""
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("sec CA"))
        .issuer_name(_name("sec CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(_name("sec CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = {
        "ca": d / "ca.crt",
        "cert": d / "tls.crt",
        "key": d / "tls.key",
        "credentials": d / "stations.yaml",
        "tokens": d / "tokens.yaml",
    }
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    out["credentials"].write_text(f'CP1: "{hash_password(STATION_PASSWORD, iterations=2000)}"\n')
    out["tokens"].write_text(
        f"ops: {{role: operator, sha256: {token_digest(OPERATOR_TOKEN)}}}\n"
        f"grafana: {{role: read-only, sha256: {token_digest(READER_TOKEN)}}}\n"
    )
    return out


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_pki(tmp_path_factory.mktemp("sec-pki"))


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    p = tmp_path / "topology.yaml"
    p.write_text(TOPOLOGY)
    return p


# ------------------------------------------------------------------------------------------ processes


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    http_port: int
    ocpp_port: int
    log: Path
    ops_port: int | None = None  # /healthz, /readyz, /metrics when GRIDCHARGE_OPS_PORT is set

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def run_once(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command that should exit by itself (a start-up error); kill it if it does not."""
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def serving(topology: Path, log: Path, *, services: str | None = None, **env: str) -> Iterator[Served]:
    """`gridcharge serve --bus memory` on free loopback ports until the block ends (SIGTERM, then kill)."""
    http_port, ocpp_port = free_port(), free_port()
    args = [
        GRIDCHARGE,
        "serve",
        "--config",
        str(topology),
        "--bus",
        "memory",
        "--http-port",
        str(http_port),
        "--ocpp-port",
        str(ocpp_port),
    ]
    if services:
        args += ["--services", services]
    full_env = clean_env(
        GRIDCHARGE_HTTP_HOST="127.0.0.1",
        GRIDCHARGE_OCPP_HOST="127.0.0.1",
        GRIDCHARGE_WEATHER_FILE=str(WEATHER),
        GRIDCHARGE_LOG_JSON="true",
        **env,
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        ops = int(env["GRIDCHARGE_OPS_PORT"]) if "GRIDCHARGE_OPS_PORT" in env else None
        served = Served(proc, http_port, ocpp_port, log, ops)
        ready_url = f"http://127.0.0.1:{ops}/readyz" if ops else f"{served.base}/readyz"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"gridcharge serve exited {proc.returncode}:\n{served.output()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"gridcharge serve not ready:\n{served.output()[-3000:]}")
                time.sleep(0.2)
            yield served
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
