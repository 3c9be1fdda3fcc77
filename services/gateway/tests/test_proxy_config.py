"""Proxy-mode settings: env strings, mounted files, and one clear line per mistake (never a secret in it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gridcharge.gateway.config import GatewaySettings, check_gateway_files, load_upstream_passwords
from gridcharge.shared.errors import ConfigError


def test_proxy_mode_from_env_with_mounted_files(tmp_path: Path) -> None:
    pw = tmp_path / "passwords.yaml"
    pw.write_text("CP1: s3cret-value-1\nCP2: 12345678\n")
    st = GatewaySettings.from_env(
        {
            "GRIDCHARGE_UPSTREAM_URL": "wss://csms.example.com/ocpp",
            "GRIDCHARGE_UPSTREAM_PASSWORDS_FILE": str(pw),
            "GRIDCHARGE_UPSTREAM_RESERVED_STACK_LEVELS": "0, 1, 5",
            "GRIDCHARGE_UPSTREAM_QUEUE_MAX": "50",
        }
    )
    check_gateway_files(st)
    assert st.proxy_mode and st.upstream_security_profile == 2 and st.upstream_queue_max == 50
    assert st.upstream_reserved_stack_levels == frozenset({0, 1, 5})
    assert load_upstream_passwords(st.upstream_passwords_file) == {"CP1": "s3cret-value-1", "CP2": "12345678"}


@pytest.mark.parametrize(
    ("env", "key", "problem"),
    [
        ({"GRIDCHARGE_UPSTREAM_URL": "https://csms.example.com"}, "GRIDCHARGE_UPSTREAM_URL", "ws://"),
        (
            {"GRIDCHARGE_UPSTREAM_URL": "wss://user:hunter2@csms.example.com/ocpp"},
            "GRIDCHARGE_UPSTREAM_URL",
            "credentials",
        ),
        ({"GRIDCHARGE_UPSTREAM_URL": "ws://csms.example.com/ocpp"}, "GRIDCHARGE_UPSTREAM_URL", "does not fit"),
        ({"GRIDCHARGE_UPSTREAM_URL": "wss://csms.example.com/ocpp"}, "GRIDCHARGE_UPSTREAM_PASSWORDS_FILE", "required"),
        (
            {
                "GRIDCHARGE_UPSTREAM_URL": "ws://csms/ocpp",
                "GRIDCHARGE_UPSTREAM_SECURITY_PROFILE": "0",
                "GRIDCHARGE_UPSTREAM_RESERVED_PROFILE_ID_MIN": "5000",
            },
            "GRIDCHARGE_UPSTREAM_RESERVED_PROFILE_ID_MIN",
            "greater",
        ),
        (
            {
                "GRIDCHARGE_UPSTREAM_URL": "ws://csms/ocpp",
                "GRIDCHARGE_UPSTREAM_SECURITY_PROFILE": "0",
                "GRIDCHARGE_UPSTREAM_CA_FILE": "/nonexistent/ca.pem",
            },
            "GRIDCHARGE_UPSTREAM_CA_FILE",
            "cannot read",
        ),
    ],
)
def test_bad_proxy_settings_are_one_line(env: dict[str, str], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_gateway_files(GatewaySettings.from_env(env))
    text = str(err.value)
    assert key in text and problem in text and "\n" not in text and "hunter2" not in text


@pytest.mark.parametrize("bad", ["4", "two", "-1"])
def test_bad_upstream_security_profile_names_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="GRIDCHARGE_UPSTREAM_SECURITY_PROFILE"):
        GatewaySettings.from_env({"GRIDCHARGE_UPSTREAM_SECURITY_PROFILE": bad})


@pytest.mark.parametrize(
    "content", ["- a\n- b\n", "CP1: {nested: x}\n", "CP1: ''\n", "CP1: [unclosed\n", "CP1: " + "x" * 65 + "\n"]
)
def test_bad_passwords_file_is_one_line_without_the_values(tmp_path: Path, content: str) -> None:
    pw = tmp_path / "passwords.yaml"
    pw.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_upstream_passwords(pw)
    assert "GRIDCHARGE_UPSTREAM_PASSWORDS_FILE" in str(err.value) and "xxxxxxxx" not in str(err.value)
