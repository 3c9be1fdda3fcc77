"""Process settings from GRIDCHARGE_* environment variables, validated at start-up.

A bad value fails fast with one line naming the variable and the problem (ConfigError).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from gridcharge.shared.errors import ConfigError
from pydantic import BaseModel, ConfigDict, ValidationError

ENV_PREFIX = "GRIDCHARGE_"


class Settings(BaseModel):
    """Settings shared by every service; services subclass it for their own keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bus: Literal["memory", "kafka"] = "memory"
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    topic_prefix: str = ""          # isolates test runs / tenants on one broker
    store_prefix: str = ""          # same for Redis keys
    topology: Path | None = None
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    ocpp_host: str = "0.0.0.0"
    ocpp_port: int = 9000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    replica_id: str = socket.gethostname()
    weather_base_url: str = "https://api.open-meteo.com"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build settings from `env` (default os.environ) plus explicit overrides (CLI flags win)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            var = ENV_PREFIX + name.upper()
            if var in env and env[var] != "":
                values[name] = env[var]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "?"
            source = "command line" if field in overrides else "environment"
            raise ConfigError(source, ENV_PREFIX + field.upper(), err["msg"]) from None
