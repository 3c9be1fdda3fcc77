"""Gateway settings: the shared Settings plus the gateway's own GRIDCHARGE_* keys."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from gridcharge.shared.config import Settings
from pydantic import Field


class GatewaySettings(Settings):
    """Env: GRIDCHARGE_SECURITY_PROFILE, GRIDCHARGE_CREDENTIALS_FILE, GRIDCHARGE_TLS_CERT, ... (upper-cased)."""

    security_profile: Literal[0, 1, 2, 3] = 0     # 0 = plain ws, no auth (development / trusted network only)
    credentials_file: Path | None = None          # YAML/JSON {station_id: "pbkdf2_sha256$iter$salt$hash"}
    tls_cert: Path | None = None                  # server certificate chain (PEM), profiles 2 and 3
    tls_key: Path | None = None                   # server private key (PEM)
    tls_ca: Path | None = None                    # CA that signs station client certificates (profile 3)
    unknown_stations: Literal["reject", "pending", "rejected", "accept"] = "reject"   # reject = HTTP 404
    heartbeat_interval_s: int = Field(300, ge=1)
    call_timeout_s: float = Field(30.0, gt=0)     # a station must answer our CALL within this time
    capabilities_timeout_s: float = Field(10.0, gt=0)
    read_capabilities: bool = True                # GetConfiguration / GetVariables after an Accepted boot
    max_message_bytes: int = Field(65_536, ge=1024)   # bigger frames close the socket with 1009
    rate_limit_per_s: float = Field(20.0, gt=0)   # sustained inbound messages per connection
    rate_burst: int = Field(100, ge=1)
    max_connections_per_ip: int = Field(1024, ge=1)
    max_connections: int = Field(20_000, ge=1)
    api_timeout_s: float = Field(35.0, gt=0)      # operator API waits this long for a command result
    ws_ping_interval_s: float = Field(60.0, ge=0)   # WebSocket ping to detect dead links; 0 = off
    validate_responses: bool = True               # schema-check our own CALLRESULTs before sending


def gateway_settings(settings: Settings) -> GatewaySettings:
    """The gateway's settings: `settings` as given (CLI overrides included) plus the gateway keys from env."""
    if isinstance(settings, GatewaySettings):
        return settings
    base = settings.model_dump()
    return GatewaySettings.from_env(**{k: v for k, v in base.items() if k in Settings.model_fields})
