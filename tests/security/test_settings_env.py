"""Every setting of every service, set through the environment the way Kubernetes sets it: strings only, files
as mounted paths (#12.6: GRIDCHARGE_SECURITY_PROFILE=1 stopped start-up, 'Input should be 0, 1, 2 or 3').

Also the name check (#15.7): a misspelt GRIDCHARGE_* variable is refused with a "did you mean".
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from gridcharge.controlbox.settings import ControlboxSettings
from gridcharge.forecasting.settings import ForecastingSettings
from gridcharge.gateway.config import GatewaySettings, check_gateway_files, gateway_settings, load_credentials
from gridcharge.shared.auth import ApiAuth
from gridcharge.shared.config import ENV_PREFIX, Settings, check_environment, known_env_vars
from gridcharge.shared.errors import ConfigError
from gridcharge.telemetry.settings import TelemetrySettings
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from .conftest import OPERATOR_TOKEN

CLASSES: list[type[Settings]] = [Settings, GatewaySettings, TelemetrySettings, ForecastingSettings, ControlboxSettings]


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def sample(name: str, info: FieldInfo) -> tuple[str, Any]:
    """A valid value as an environment string, and what the field must hold after parsing it.

    Literals take their last choice and booleans the opposite of the default, so the string really has to be
    converted (a default would pass unparsed)."""
    ann = _unwrap(info.annotation)
    default = info.default
    if typing.get_origin(ann) is Literal:
        choice = typing.get_args(ann)[-1]
        return str(choice), choice
    if ann is bool:
        return ("false", False) if default else ("true", True)
    if ann is SecretStr:
        return f"k8s:operator:{OPERATOR_TOKEN}", f"k8s:operator:{OPERATOR_TOKEN}"
    if ann is Path:
        return f"/etc/gridcharge/{name}", Path(f"/etc/gridcharge/{name}")
    if ann is int:
        number = default if isinstance(default, int) else 9100
        return str(number), number
    if ann is float:
        real = float(default) if isinstance(default, int | float) else 1.5
        return repr(real), real
    if ann is str:
        return f"{name}-value", f"{name}-value"
    if typing.get_origin(ann) is frozenset and typing.get_args(ann) == (int,):
        return "2, 3", frozenset({2, 3})
    if typing.get_origin(ann) is frozenset:
        return "cs-1, cs-2", frozenset({"cs-1", "cs-2"})
    raise AssertionError(f"{name}: no sample for {info.annotation} (extend the test)")


CASES = [
    (cls, name) for cls in CLASSES for name in cls.model_fields if cls is Settings or name not in Settings.model_fields
]


@pytest.mark.parametrize(("cls", "name"), CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_every_setting_parses_from_its_environment_string(cls: type[Settings], name: str) -> None:
    raw, expected = sample(name, cls.model_fields[name])
    s = cls.from_env({ENV_PREFIX + name.upper(): raw})
    got = getattr(s, name)
    assert (got.get_secret_value() if isinstance(got, SecretStr) else got) == expected


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_all_settings_at_once_as_a_pod_env(cls: type[Settings]) -> None:
    env = {ENV_PREFIX + n.upper(): sample(n, f)[0] for n, f in cls.model_fields.items()}
    cls.from_env(env)


@pytest.mark.parametrize("profile", ["0", "1", "2", "3", " 2 "])
def test_security_profile_as_the_chart_sets_it(profile: str) -> None:
    assert GatewaySettings.from_env({"GRIDCHARGE_SECURITY_PROFILE": profile}).security_profile == int(profile)


@pytest.mark.parametrize("bad", ["4", "two", "1.0", "-1"])
def test_bad_security_profile_names_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="GRIDCHARGE_SECURITY_PROFILE"):
        GatewaySettings.from_env({"GRIDCHARGE_SECURITY_PROFILE": bad})


def test_gateway_keeps_env_keys_when_derived_from_host_settings() -> None:
    env = {"GRIDCHARGE_SECURITY_PROFILE": "1", "GRIDCHARGE_HTTP_PORT": "8080"}
    host = Settings.from_env(env, http_port=9999)
    gw = GatewaySettings.from_env(env, **{k: v for k, v in host.model_dump().items()})
    assert gw.security_profile == 1 and gw.http_port == 9999
    assert isinstance(gateway_settings(gw), GatewaySettings)


# ------------------------------------------------------------------------------------------ mounted files


def test_gateway_with_files_mounted_like_the_chart(pki: dict[str, Path]) -> None:
    """Profile 2 with the credentials Secret and the TLS Secret mounted as files: every start-up check passes."""
    env = {
        "GRIDCHARGE_SECURITY_PROFILE": "2",
        "GRIDCHARGE_CREDENTIALS_FILE": str(pki["credentials"]),
        "GRIDCHARGE_TLS_CERT": str(pki["cert"]),
        "GRIDCHARGE_TLS_KEY": str(pki["key"]),
    }
    st = GatewaySettings.from_env(env)
    check_gateway_files(st)
    assert "CP1" in load_credentials(st.credentials_file)


def test_profile_3_with_ca_file(pki: dict[str, Path]) -> None:
    st = GatewaySettings.from_env(
        {
            "GRIDCHARGE_SECURITY_PROFILE": "3",
            "GRIDCHARGE_TLS_CERT": str(pki["cert"]),
            "GRIDCHARGE_TLS_KEY": str(pki["key"]),
            "GRIDCHARGE_TLS_CA": str(pki["ca"]),
        }
    )
    check_gateway_files(st)


def test_api_tokens_from_mounted_file_and_env(pki: dict[str, Path]) -> None:
    st = Settings.from_env(
        {"GRIDCHARGE_API_TOKENS_FILE": str(pki["tokens"]), "GRIDCHARGE_API_TOKENS": f"ci:read-only:{OPERATOR_TOKEN}x"}
    )
    auth = ApiAuth.from_settings(st)
    assert auth.configured and auth.tokens.lookup(OPERATOR_TOKEN) is not None
    assert auth.tokens.lookup(OPERATOR_TOKEN + "x") is not None


@pytest.mark.parametrize(
    ("env", "key", "problem"),
    [
        (
            {"GRIDCHARGE_TLS_CERT": "/nonexistent/tls.crt", "GRIDCHARGE_SECURITY_PROFILE": "2"},
            "GRIDCHARGE_TLS_CERT",
            "cannot read",
        ),
        ({"GRIDCHARGE_TLS_CERT": "@cert", "GRIDCHARGE_TLS_KEY": "@key"}, "GRIDCHARGE_TLS_CERT", "plain ws"),
        (
            {"GRIDCHARGE_SECURITY_PROFILE": "2", "GRIDCHARGE_CREDENTIALS_FILE": "@credentials"},
            "GRIDCHARGE_TLS_CERT",
            "required",
        ),
        ({"GRIDCHARGE_SECURITY_PROFILE": "1"}, "GRIDCHARGE_CREDENTIALS_FILE", "required"),
        (
            {
                "GRIDCHARGE_SECURITY_PROFILE": "2",
                "GRIDCHARGE_TLS_CERT": "@key",
                "GRIDCHARGE_TLS_KEY": "@cert",
                "GRIDCHARGE_CREDENTIALS_FILE": "@credentials",
            },
            "GRIDCHARGE_TLS_CERT",
            "not a matching PEM",
        ),
        (
            {"GRIDCHARGE_SECURITY_PROFILE": "3", "GRIDCHARGE_TLS_CERT": "@cert", "GRIDCHARGE_TLS_KEY": "@key"},
            "GRIDCHARGE_TLS_CA",
            "required",
        ),
    ],
)
def test_gateway_file_problems_are_one_line(pki: dict[str, Path], env: dict[str, str], key: str, problem: str) -> None:
    env = {k: str(pki[v[1:]]) if v.startswith("@") else v for k, v in env.items()}
    with pytest.raises(ConfigError) as err:
        check_gateway_files(GatewaySettings.from_env(env))
    assert key in err.value.key and problem in err.value.problem and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("CP1: plain-password\n", "pbkdf2_sha256"),
        ("- CP1\n- CP2\n", "mapping"),
        ("CP1: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_credentials_file_is_one_line(tmp_path: Path, content: str, problem: str) -> None:
    p = tmp_path / "stations.yaml"
    p.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_credentials(p)
    assert problem in str(err.value) and "GRIDCHARGE_CREDENTIALS_FILE" in str(err.value)


def test_missing_credentials_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_credentials(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------------ variable names


def test_every_settings_field_is_a_known_variable() -> None:
    known = known_env_vars()
    for cls in CLASSES:
        for name in cls.model_fields:
            assert ENV_PREFIX + name.upper() in known


@pytest.mark.parametrize(
    ("var", "suggestion"),
    [
        ("GRIDCHARGE_SECURTY_PROFILE", "GRIDCHARGE_SECURITY_PROFILE"),
        ("GRIDCHARGE_API_TOKEN_FILE", "GRIDCHARGE_API_TOKENS_FILE"),
        ("GRIDCHARGE_HTTP_PROT", "GRIDCHARGE_HTTP_PORT"),
        ("GRIDCHARGE_security_profile", "GRIDCHARGE_SECURITY_PROFILE"),
        ("GRIDCHARGE_TELEMETRY_SNAPSHOTS_S", "GRIDCHARGE_TELEMETRY_SNAPSHOT_S"),
    ],
)
def test_misspelt_variable_is_refused_with_a_suggestion(var: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_environment({var: "2", "PATH": "/bin"})
    assert err.value.key == var and f"did you mean {suggestion}?" in err.value.problem


def test_unrelated_unknown_variable_is_only_a_warning() -> None:
    warnings = check_environment(
        {
            "GRIDCHARGE_FANCY_NEW_FEATURE": "1",
            "GRIDCHARGE_SERVICE": "gateway",
            "GRIDCHARGE_WEATHER_FILE": "/x",
            "GRIDCHARGE_TELEMETRY_RUNTIME": "bus",
        }
    )
    assert warnings == ["GRIDCHARGE_FANCY_NEW_FEATURE: unknown variable, ignored"]


def test_security_doc_lists_every_setting() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    missing = sorted(v for v in known_env_vars() if v not in doc)
    assert missing == [], f"docs/security.md does not mention {missing}"
