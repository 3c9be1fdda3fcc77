"""Start-up errors of the real processes (#15.7): `gridcharge serve` and `python -m gridcharge.<service>` end with
one line naming the variable or file and the problem, and a non-zero exit status, instead of a 34-74-line
traceback; a misspelt variable or an unusable TLS file is no longer ignored. And the chart's env for station
credentials (#12.6) starts a real gateway."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .conftest import GRIDCHARGE, PY, STATION_PASSWORD, clean_env, free_port, run_once, serving

TOPOLOGY = "nodes: [{id: a, kind: site, limit_a: [100, 100, 100]}]\nstations: [{id: CP1, node: a}]\n"
CASES: dict[str, tuple[dict[str, str], str, str]] = {
    # name: (environment, expected variable or file in the line, expected problem in the line)
    "credentials file missing": (
        {"GRIDCHARGE_SECURITY_PROFILE": "1", "GRIDCHARGE_CREDENTIALS_FILE": "/nonexistent/s.yaml"},
        "GRIDCHARGE_CREDENTIALS_FILE",
        "cannot read",
    ),
    "credentials file with a plain password": (
        {"GRIDCHARGE_SECURITY_PROFILE": "1", "GRIDCHARGE_CREDENTIALS_FILE": "@plain"},
        "GRIDCHARGE_CREDENTIALS_FILE",
        "pbkdf2_sha256",
    ),
    "credentials file not YAML": (
        {"GRIDCHARGE_SECURITY_PROFILE": "1", "GRIDCHARGE_CREDENTIALS_FILE": "@broken"},
        "GRIDCHARGE_CREDENTIALS_FILE",
        "invalid YAML",
    ),
    "profile 1 without credentials": ({"GRIDCHARGE_SECURITY_PROFILE": "1"}, "GRIDCHARGE_CREDENTIALS_FILE", "required"),
    "TLS cert does not exist": ({"GRIDCHARGE_TLS_CERT": "/nonexistent"}, "GRIDCHARGE_TLS_CERT", "cannot read"),
    "TLS cert on a plain-ws gateway": (
        {"GRIDCHARGE_TLS_CERT": "@cert", "GRIDCHARGE_TLS_KEY": "@key"},
        "GRIDCHARGE_TLS_CERT",
        "plain ws",
    ),
    "misspelt security profile": (
        {"GRIDCHARGE_SECURTY_PROFILE": "2"},
        "GRIDCHARGE_SECURTY_PROFILE",
        "did you mean GRIDCHARGE_SECURITY_PROFILE?",
    ),
    "security profile out of range": (
        {"GRIDCHARGE_SECURITY_PROFILE": "5"},
        "GRIDCHARGE_SECURITY_PROFILE",
        "Input should be",
    ),
    "HTTP port out of range": ({"GRIDCHARGE_HTTP_PORT": "70000"}, "GRIDCHARGE_HTTP_PORT", "less than or equal"),
    "OCPP port not a number": ({"GRIDCHARGE_OCPP_PORT": "ninety"}, "GRIDCHARGE_OCPP_PORT", "integer"),
    "HTTP port in use": ({"GRIDCHARGE_HTTP_PORT": "@busy"}, "GRIDCHARGE_HTTP_PORT", "Address already in use"),
    "OCPP port in use": ({"GRIDCHARGE_OCPP_PORT": "@busy"}, "GRIDCHARGE_OCPP_PORT", "Address already in use"),
    "API token file missing": (
        {"GRIDCHARGE_API_TOKENS_FILE": "/nonexistent/tokens.yaml"},
        "GRIDCHARGE_API_TOKENS_FILE",
        "cannot read",
    ),
    "API token too short": ({"GRIDCHARGE_API_TOKENS": "ops:operator:abc"}, "GRIDCHARGE_API_TOKENS", "shorter"),
    "topology with NaN": ({"GRIDCHARGE_TOPOLOGY": "@nan"}, "nodes[0].limit_a[0]", "finite"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("startup")
    out = {
        "cert": pki["cert"],
        "key": pki["key"],
        "plain": d / "plain.yaml",
        "broken": d / "broken.yaml",
        "nan": d / "nan.yaml",
        "topology": d / "topology.yaml",
    }
    out["plain"].write_text("CP1: my-password\n")
    out["broken"].write_text("CP1: [unclosed\n")
    out["nan"].write_text("nodes: [{id: a, limit_a: [.nan, 10, 10]}]\n")
    out["topology"].write_text(TOPOLOGY)
    return out


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _env(files: dict[str, Path], case: dict[str, str], busy: int) -> dict[str, str]:
    env = clean_env(
        GRIDCHARGE_TOPOLOGY=str(files["topology"]),
        GRIDCHARGE_HTTP_HOST="127.0.0.1",
        GRIDCHARGE_OCPP_HOST="127.0.0.1",
        GRIDCHARGE_HTTP_PORT=str(free_port()),
        GRIDCHARGE_OCPP_PORT=str(free_port()),
        GRIDCHARGE_LOG_JSON="true",
    )
    for k, v in case.items():
        env[k] = str(busy) if v == "@busy" else str(files[v[1:]]) if v.startswith("@") else v
    return env


def _check(stderr: str, stdout: str, returncode: int, key: str, problem: str) -> None:
    lines = [ln for ln in (stdout + stderr).splitlines() if ln.strip()]
    assert returncode == 2, (returncode, stdout, stderr)
    assert len(lines) == 1, "expected one line, got:\n" + "\n".join(lines[:80])
    assert "config error" in lines[0] and key in lines[0] and problem in lines[0], lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_gateway_process_start_up_error_is_one_line(files: dict[str, Path], busy_port: int, case: str) -> None:
    env_case, key, problem = CASES[case]
    r = run_once([PY, "-m", "gridcharge.gateway"], _env(files, env_case, busy_port))
    _check(r.stderr, r.stdout, r.returncode, key, problem)
    assert r.stderr.startswith("gridcharge-gateway: config error: ")


SERVE_CASES = [
    "credentials file missing",
    "misspelt security profile",
    "TLS cert does not exist",
    "HTTP port in use",
    "OCPP port in use",
    "API token file missing",
    "topology with NaN",
]


@pytest.mark.parametrize("case", SERVE_CASES)
def test_gridcharge_serve_start_up_error_is_one_line(files: dict[str, Path], busy_port: int, case: str) -> None:
    env_case, key, problem = CASES[case]
    env = _env(files, env_case, busy_port)
    args = [GRIDCHARGE, "serve", "--config", env.pop("GRIDCHARGE_TOPOLOGY"), "--bus", "memory"]
    r = run_once(args, env)
    _check(r.stderr, r.stdout, r.returncode, key, problem)
    assert r.stderr.startswith("gridcharge: config error: ")


@pytest.mark.parametrize("service", ["telemetry", "allocation", "forecasting"])
def test_other_service_processes_refuse_a_misspelt_variable(
    files: dict[str, Path], busy_port: int, service: str
) -> None:
    r = run_once(
        [PY, "-m", f"gridcharge.{service}"], _env(files, {"GRIDCHARGE_API_TOKEN_FILE": "/etc/tokens.yaml"}, busy_port)
    )
    _check(r.stderr, r.stdout, r.returncode, "GRIDCHARGE_API_TOKEN_FILE", "did you mean GRIDCHARGE_API_TOKENS_FILE?")


def test_command_line_port_out_of_range(files: dict[str, Path]) -> None:
    r = run_once([GRIDCHARGE, "serve", "--config", str(files["topology"]), "--http-port", "70000"], clean_env())
    _check(r.stderr, r.stdout, r.returncode, "GRIDCHARGE_HTTP_PORT", "less than or equal")
    assert "command line" in r.stderr


def test_gateway_with_the_charts_credentials_env_starts_and_authenticates(tmp_path: Path, pki: dict[str, Path]) -> None:
    """What the chart sets when station credentials are configured (a string "1" and a mounted file)."""
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    with serving(
        topology,
        tmp_path / "serve.log",
        services="gateway",
        GRIDCHARGE_SECURITY_PROFILE="1",
        GRIDCHARGE_CREDENTIALS_FILE=str(pki["credentials"]),
    ) as served:
        auth = "Basic " + base64.b64encode(f"CP1:{STATION_PASSWORD}".encode()).decode()
        with connect(
            f"ws://127.0.0.1:{served.ocpp_port}/ocpp/CP1",
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            additional_headers={"Authorization": auth},
        ) as ws:
            assert ws.subprotocol == "ocpp1.6"
        with pytest.raises(Exception, match="401"):
            connect(
                f"ws://127.0.0.1:{served.ocpp_port}/ocpp/CP1",
                subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                additional_headers={"Authorization": "Basic " + base64.b64encode(b"CP1:wrong").decode()},
            )
