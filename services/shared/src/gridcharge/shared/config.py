"""Process settings from GRIDCHARGE_* environment variables, validated at start-up.

A bad value fails fast with one line naming the variable and the problem (ConfigError). Values come as
Kubernetes and shells give them, as strings: `from_env` converts them to each field's type first (pydantic
alone does not turn "2" into the Literal 2). `check_environment` catches misspelt variable names, which
would otherwise silently leave a setting (e.g. the OCPP security profile) at its default.
"""

from __future__ import annotations

import difflib
import importlib
import os
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from gridcharge.shared.errors import ConfigError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

ENV_PREFIX = "GRIDCHARGE_"
MIB = 1024 * 1024

# Modules whose Settings subclasses define the other GRIDCHARGE_* names; imported (best effort: a one-service
# image lacks the others) only to tell a misspelt variable from another service's.
SETTINGS_MODULES = (
    "gridcharge.gateway.config",
    "gridcharge.telemetry.settings",
    "gridcharge.forecasting.settings",
    "gridcharge.allocation.settings",
    "gridcharge.controlbox.settings",
    "gridcharge.gridsignals.settings",
)
# Variables read by the container entry point and the scripts, not by Settings.
TOOLING_VARS = frozenset(
    {
        "GRIDCHARGE_SERVICE",
        "GRIDCHARGE_RUN_DIR",
        "GRIDCHARGE_CACHE",
        "GRIDCHARGE_TOOLS_DIR",
        "GRIDCHARGE_TOOLS_CACHE",
        "GRIDCHARGE_SKIP_HADOLINT",
        "GRIDCHARGE_SKIP_SHELLCHECK",
    }
)


class Settings(BaseModel):
    """Settings shared by every service; services subclass it for their own keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    registry: ClassVar[list[type[Settings]]] = []

    bus: Literal["memory", "kafka"] = "memory"
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    topic_prefix: str = ""  # isolates test runs / tenants on one broker
    store_prefix: str = ""  # same for Redis keys
    topology: Path | None = None
    http_host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=0, le=65535)
    ocpp_host: str = "0.0.0.0"
    ocpp_port: int = Field(9000, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    replica_id: str = socket.gethostname()
    weather_base_url: str = "https://api.open-meteo.com"

    # -- HTTP edge (docs/security.md) ----------------------------------------------------------------
    ops_port: int | None = Field(None, ge=0, le=65535)  # /metrics /healthz /readyz alone on this port
    http_max_body_bytes: int = Field(MIB, ge=1024, le=64 * MIB)  # larger request bodies: 413, while streaming
    http_header_timeout_s: float = Field(10.0, gt=0, le=600)  # request line + headers must arrive within this
    http_body_timeout_s: float = Field(30.0, gt=0, le=3600)  # the whole body within this after the headers
    http_keepalive_timeout_s: float = Field(5.0, gt=0, le=600)
    http_max_connections: int = Field(256, ge=1, le=100_000)  # open HTTP connections (per port)
    http_max_connections_per_ip: int = Field(64, ge=1, le=100_000)
    api_tokens_file: Path | None = None  # YAML {name: {role, sha256}} (a mounted Secret); reloaded on change
    api_tokens: SecretStr = SecretStr("")  # "name:role:token,..." (e.g. from a Secret via secretKeyRef)
    api_open_access: bool = False  # development only: callers without credentials act as operator
    oidc_issuer: str = ""  # OIDC/JWT: `iss` that tokens must carry; empty = OIDC off
    oidc_audience: str = ""  # `aud` that tokens must carry (required with an issuer)
    oidc_jwks_url: str = ""  # the identity provider's JWKS (https, cached)
    oidc_jwks_file: Path | None = None  # or a JWKS file (e.g. mounted), reloaded on change
    oidc_roles_claim: str = "roles"  # claim holding roles/groups; dotted path, e.g. realm_access.roles
    oidc_role_map: str = ""  # "idp-group=operator,idp-viewers=read-only"; default: the role names
    oidc_algorithms: str = "RS256,ES256"  # accepted signature algorithms (asymmetric only)
    oidc_jwks_cache_s: float = Field(300.0, ge=0, le=86400)
    oidc_leeway_s: float = Field(30.0, ge=0, le=300)  # clock skew allowed on exp/nbf/iat

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Settings.registry.append(cls)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build settings from `env` (default os.environ) plus explicit overrides (CLI flags win)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            var = ENV_PREFIX + name.upper()
            if var in env and env[var] != "":
                values[name] = _from_string(info.annotation, env[var])
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "?"
            source = "command line" if field in overrides else "environment"
            raise ConfigError(source, ENV_PREFIX + field.upper(), err["msg"]) from None


def _from_string(annotation: Any, raw: str) -> Any:
    """An environment string as the field's type expects it where pydantic's lax mode does not convert:
    integer Literals (GRIDCHARGE_SECURITY_PROFILE=2). Everything else pydantic converts and checks itself."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in args:
            if arg is not type(None):
                return _from_string(arg, raw)
    if typing.get_origin(annotation) is Literal and args and all(type(a) is int for a in args):
        text = raw.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
    return raw


def known_env_vars() -> frozenset[str]:
    """Every GRIDCHARGE_* name some part of gridcharge reads."""
    for module in SETTINGS_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    classes: list[type[Settings]] = [Settings, *Settings.registry]
    names = {ENV_PREFIX + f.upper() for cls in classes for f in cls.model_fields}
    return frozenset(names) | TOOLING_VARS


def check_environment(env: Mapping[str, str] | None = None) -> list[str]:
    """Refuse GRIDCHARGE_* variables that look like a misspelt known one; return a warning for other unknown ones.

    A near miss is an error, not a warning: GRIDCHARGE_SECURTY_PROFILE=2 would otherwise start a gateway without
    station authentication, and nobody reads warnings until it is too late. Names that resemble nothing are only
    warned about (a newer version's setting, or another tool's)."""
    env = os.environ if env is None else env
    known = known_env_vars()
    by_suffix = {k.removeprefix(ENV_PREFIX): k for k in known}
    warnings: list[str] = []
    for var in sorted(env):
        if not var.upper().startswith(ENV_PREFIX) or var in known:
            continue
        if var.upper() in known:
            raise ConfigError(
                "environment", var, f"unknown variable; did you mean {var.upper()}? (names are upper case)"
            )
        close = difflib.get_close_matches(var.upper().removeprefix(ENV_PREFIX), list(by_suffix), n=1, cutoff=0.8)
        if close:
            raise ConfigError(
                "environment",
                var,
                f"unknown variable; did you mean {by_suffix[close[0]]}? "
                "(refused: a misspelt setting would silently keep its default)",
            )
        warnings.append(f"{var}: unknown variable, ignored")
    return warnings
