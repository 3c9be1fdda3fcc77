"""Gateway settings: the shared Settings plus the gateway's own GRIDCHARGE_* keys."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from gridcharge.gateway.adapters.client_certs import check_client_certs_dir
from gridcharge.gateway.adapters.credentials import Credentials
from gridcharge.shared.config import ENV_PREFIX, Settings
from gridcharge.shared.errors import ConfigError
from pydantic import Field, field_validator


class GatewaySettings(Settings):
    """Env: GRIDCHARGE_SECURITY_PROFILE, GRIDCHARGE_CREDENTIALS_FILE, GRIDCHARGE_TLS_CERT, ... (upper-cased)."""

    security_profile: Literal[0, 1, 2, 3] = 0  # 0 = plain ws, no auth (development / trusted network only)
    credentials_file: Path | None = None  # YAML/JSON {station_id: "pbkdf2_sha256$iter$salt$hash"}
    tls_cert: Path | None = None  # server certificate chain (PEM), profiles 2 and 3
    tls_key: Path | None = None  # server private key (PEM)
    tls_ca: Path | None = None  # CA that signs station client certificates (profile 3)
    unknown_stations: Literal["reject", "pending", "rejected", "accept"] = "reject"  # reject = HTTP 404
    heartbeat_interval_s: int = Field(300, ge=1)
    call_timeout_s: float = Field(30.0, gt=0)  # a station must answer our CALL within this time
    capabilities_timeout_s: float = Field(10.0, gt=0)
    read_capabilities: bool = True  # GetConfiguration / GetVariables after an Accepted boot
    max_message_bytes: int = Field(65_536, ge=1024)  # bigger frames close the socket with 1009
    rate_limit_per_s: float = Field(20.0, gt=0)  # sustained inbound messages per station id (across reconnects)
    rate_burst: int = Field(100, ge=1)
    ip_rate_limit_per_s: float = Field(500.0, gt=0)  # sustained inbound messages per source IP (all its stations)
    ip_rate_burst: int = Field(5000, ge=1)
    # failed Basic auth (profiles 1, 2): wait base * 2^(n-1) s (at most max) before the next attempt, and
    # after `auth_lockout_after` failures (per station id; per source IP: `auth_ip_lockout_after`) refuse
    # every attempt for `auth_lockout_s`
    auth_backoff_base_s: float = Field(1.0, gt=0)
    auth_backoff_max_s: float = Field(60.0, gt=0)
    auth_lockout_after: int = Field(10, ge=1)
    auth_ip_lockout_after: int = Field(100, ge=1)
    auth_lockout_s: float = Field(300.0, gt=0)
    max_connections_per_ip: int = Field(1024, ge=1)
    max_connections: int = Field(20_000, ge=1)
    api_timeout_s: float = Field(35.0, gt=0)  # operator API waits this long for a command result
    ws_ping_interval_s: float = Field(60.0, ge=0)  # WebSocket ping to detect dead links; 0 = off
    validate_responses: bool = True  # schema-check our own CALLRESULTs before sending
    # closed-loop profile check (docs/grid-interfaces.md): read back what a station applies after every
    # accepted profile write (coalesced, after the delay) and in a slow audit, at most N checks per station
    # and hour; reads only (GetChargingProfiles, GetCompositeSchedule), nothing is written to the station
    profile_check: bool = True
    profile_check_delay_s: float = Field(30.0, ge=0)
    profile_audit_interval_s: float = Field(3600.0, ge=0)  # 0 = no periodic audit (checks after writes only)
    profile_checks_per_hour: int = Field(4, ge=1, le=60)
    profile_check_skew_s: float = Field(30.0, ge=0)  # a profile ending within this may already be gone
    # registration (BootNotification): a station's boot status is kept in the store this long after it
    # was last connected, so a reconnect without a reboot needs no new boot
    boot_state_ttl_s: float = Field(7 * 86400.0, gt=0)
    pending_stations: frozenset[str] = frozenset()  # answered Pending for `pending_hold_s` (provisioning); "*" = all
    pending_hold_s: float = Field(60.0, ge=0)
    pending_interval_s: int = Field(30, ge=1)  # BootNotification interval given with Pending
    cluster_timeout_s: float = Field(5.0, gt=0)  # store/bus not answering a boot within this -> Pending
    # authorization of idTokens: accept-all (every token Accepted) or local-list (the store's
    # `gw:id-tokens` hash, then `id_tokens_file`, then an upstream authorizer if one is plugged in)
    authorization: Literal["accept-all", "local-list"] = "accept-all"
    id_tokens_file: Path | None = None  # YAML/JSON {id_token: status | {status, expiry, group}}
    # proxy mode (docs/grid-interfaces.md, "Upstream CSMS (proxy mode)"): every station is relayed to this
    # CSMS over its own connection, `<upstream_url>/<station_id>`, same OCPP version; "" = off
    upstream_url: str = ""
    # 0 ws, 1 ws + Basic, 2 wss (CA-verified) + Basic, 3 wss + a client certificate per station (CN = station id)
    upstream_security_profile: Literal[0, 1, 2, 3] = 2
    upstream_passwords_file: Path | None = None  # YAML/JSON {station_id: password} for Basic (a mounted Secret)
    upstream_client_certs_dir: Path | None = None  # profile 3: <station_id>.crt + <station_id>.key (a mounted Secret)
    upstream_ca_file: Path | None = None  # CA bundle (PEM) of the upstream's certificate; unset = system CAs
    upstream_connect_timeout_s: float = Field(10.0, gt=0)
    upstream_call_timeout_s: float = Field(10.0, gt=0)  # upstream answer to a relayed station message; then local
    upstream_backoff_max_s: float = Field(60.0, gt=0)  # reconnect back-off 1, 2, 4 ... s up to this
    upstream_queue_max: int = Field(1000, ge=1)  # transaction messages queued per station while the upstream is down
    # profile stack levels (of ChargingStationMaxProfile and TxProfile) and profile ids that are gridcharge's:
    # an upstream profile there is refused (docs/grid-interfaces.md)
    upstream_reserved_stack_levels: frozenset[int] = frozenset({0, 1})
    upstream_reserved_profile_id_min: int = Field(1000, ge=0)
    upstream_reserved_profile_id_max: int = Field(3999, ge=0)

    @field_validator("pending_stations", mode="before")
    @classmethod
    def _station_list(cls, v: object) -> object:
        """Env gives a string: comma-separated ids (or a JSON list)."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [s.strip() for s in text.split(",") if s.strip()]
        return v

    @field_validator("upstream_reserved_stack_levels", mode="before")
    @classmethod
    def _int_list(cls, v: object) -> object:
        """Env gives a string: comma-separated stack levels (or a JSON list)."""
        if isinstance(v, str):
            text = v.strip()
            return json.loads(text) if text.startswith("[") else [s.strip() for s in text.split(",") if s.strip()]
        return v

    @property
    def proxy_mode(self) -> bool:
        return bool(self.upstream_url)

    def is_pending_station(self, station_id: str) -> bool:
        return station_id in self.pending_stations or "*" in self.pending_stations


def gateway_settings(settings: Settings) -> GatewaySettings:
    """The gateway's settings: `settings` as given (CLI overrides included) plus the gateway keys from env."""
    if isinstance(settings, GatewaySettings):
        return settings
    base = settings.model_dump()
    return GatewaySettings.from_env(**{k: v for k, v in base.items() if k in Settings.model_fields})


def check_gateway_files(st: GatewaySettings) -> None:
    """Fail start-up with one line when a configured file is missing or unusable, or a TLS setting would be
    silently ignored (a TLS key given to a plain-ws gateway is a deployment mistake, not an option)."""
    files = {
        "credentials_file": st.credentials_file,
        "tls_cert": st.tls_cert,
        "tls_key": st.tls_key,
        "tls_ca": st.tls_ca,
    }
    for name, path in {
        **files,
        "upstream_passwords_file": st.upstream_passwords_file,
        "upstream_ca_file": st.upstream_ca_file,
    }.items():
        if path is None:
            continue
        var = ENV_PREFIX + name.upper()
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise ConfigError(str(path), var, f"cannot read: {exc.strerror or exc}") from None
    profile = f"{ENV_PREFIX}SECURITY_PROFILE={st.security_profile}"
    if st.security_profile < 2:
        for name in ("tls_cert", "tls_key", "tls_ca"):
            if files[name] is not None:
                raise ConfigError(
                    "environment",
                    ENV_PREFIX + name.upper(),
                    f"set, but {profile} serves plain ws and would ignore it (use profile 2 or 3)",
                )
    else:
        for name in ("tls_cert", "tls_key"):
            if files[name] is None:
                raise ConfigError("environment", ENV_PREFIX + name.upper(), f"required by {profile}")
        if st.security_profile == 3 and st.tls_ca is None:
            raise ConfigError("environment", f"{ENV_PREFIX}TLS_CA", f"required by {profile} (station client CA)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(st.tls_cert), str(st.tls_key))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{st.tls_cert} + {st.tls_key}",
                f"{ENV_PREFIX}TLS_CERT/{ENV_PREFIX}TLS_KEY",
                f"not a matching PEM certificate chain and private key ({exc.__class__.__name__}: "
                f"{getattr(exc, 'reason', None) or exc})",
            ) from None
        if st.tls_ca is not None:
            try:
                ctx.load_verify_locations(str(st.tls_ca))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(str(st.tls_ca), f"{ENV_PREFIX}TLS_CA", f"not a PEM CA certificate ({exc})") from None
    check_upstream(st)
    if st.security_profile in (1, 2) and st.credentials_file is None:
        raise ConfigError(
            "environment",
            f"{ENV_PREFIX}CREDENTIALS_FILE",
            f"required by {profile} (HTTP Basic passwords of the stations)",
        )


def load_credentials(path: Path | None) -> Credentials:
    """Station credentials, or one-line ConfigError: a broken file must stop start-up, not reject every station."""
    var = f"{ENV_PREFIX}CREDENTIALS_FILE"
    try:
        creds = Credentials.load(path)
    except OSError as exc:
        raise ConfigError(str(path), var, f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), var, f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except ValueError as exc:
        raise ConfigError(str(path), var, str(exc).removeprefix(f"{path}: ")) from None
    for station, encoded in creds.hashes.items():
        parts = encoded.split("$")
        if len(parts) != 4 or parts[0] != "pbkdf2_sha256" or not parts[1].isdigit():
            raise ConfigError(
                str(path),
                f"{var}: {station[:48]}",
                "not a pbkdf2_sha256$<iterations>$<salt>$<hash> entry (plain passwords are not "
                "accepted; make one with python -m gridcharge.gateway.adapters.credentials)",
            )
    return creds


def check_upstream(st: GatewaySettings) -> None:
    """Proxy-mode settings that cannot work stop start-up with one line (the URL is never echoed: it may be
    copied from a CSMS console with credentials in it)."""
    if not st.upstream_url:
        return
    var = f"{ENV_PREFIX}UPSTREAM_URL"
    url = urlsplit(st.upstream_url)
    if url.scheme not in ("ws", "wss") or not url.hostname:
        raise ConfigError("environment", var, "must be ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH")
    if url.username or url.password:
        raise ConfigError("environment", var, "must not carry credentials (use GRIDCHARGE_UPSTREAM_PASSWORDS_FILE)")
    up = st.upstream_security_profile
    profile = f"{ENV_PREFIX}UPSTREAM_SECURITY_PROFILE={up}"
    if (url.scheme == "wss") != (up >= 2):
        raise ConfigError("environment", var, f"scheme {url.scheme} does not fit {profile} (2, 3 = wss; 0, 1 = ws)")
    if up < st.security_profile:
        # the station connects with profile N because its traffic and identity deserve it: relaying it to
        # the upstream with less (in clear text, or with a password instead of its certificate) is a downgrade
        raise ConfigError(
            "environment",
            f"{ENV_PREFIX}UPSTREAM_SECURITY_PROFILE",
            f"{up} is below the stations' GRIDCHARGE_SECURITY_PROFILE={st.security_profile} "
            "(the upstream leg must keep at least the stations' profile)",
        )
    if up in (1, 2) and st.upstream_passwords_file is None:
        raise ConfigError("environment", f"{ENV_PREFIX}UPSTREAM_PASSWORDS_FILE", f"required by {profile}")
    if up == 3 and st.upstream_passwords_file is not None:
        raise ConfigError(
            "environment",
            f"{ENV_PREFIX}UPSTREAM_PASSWORDS_FILE",
            f"set, but {profile} authenticates with client certificates and sends no password",
        )
    if up == 3 and st.upstream_client_certs_dir is None:
        raise ConfigError("environment", f"{ENV_PREFIX}UPSTREAM_CLIENT_CERTS_DIR", f"required by {profile}")
    if up != 3 and st.upstream_client_certs_dir is not None:
        raise ConfigError(
            "environment",
            f"{ENV_PREFIX}UPSTREAM_CLIENT_CERTS_DIR",
            f"set, but {profile} presents no client certificate and would ignore it (use profile 3)",
        )
    if st.upstream_reserved_profile_id_min > st.upstream_reserved_profile_id_max:
        raise ConfigError(
            "environment",
            f"{ENV_PREFIX}UPSTREAM_RESERVED_PROFILE_ID_MIN",
            "greater than GRIDCHARGE_UPSTREAM_RESERVED_PROFILE_ID_MAX",
        )
    if not st.upstream_reserved_stack_levels or min(st.upstream_reserved_stack_levels) < 0:
        raise ConfigError(
            "environment",
            f"{ENV_PREFIX}UPSTREAM_RESERVED_STACK_LEVELS",
            "needs at least one stack level >= 0 (gridcharge's own profiles)",
        )
    if st.upstream_ca_file is not None:
        ctx = ssl.create_default_context()
        try:
            ctx.load_verify_locations(str(st.upstream_ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                str(st.upstream_ca_file),
                f"{ENV_PREFIX}UPSTREAM_CA_FILE",
                f"not a readable PEM CA bundle ({exc.__class__.__name__})",
            ) from None
    if st.upstream_client_certs_dir is not None:
        check_client_certs_dir(st.upstream_client_certs_dir, [])


def load_upstream_passwords(path: Path | None) -> dict[str, str]:
    """{station_id: password} for the upstream's Basic auth, or one-line ConfigError (never the values)."""
    if path is None:
        return {}
    var = f"{ENV_PREFIX}UPSTREAM_PASSWORDS_FILE"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(str(path), var, f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError:
        raise ConfigError(str(path), var, "invalid YAML/JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), var, "expected a mapping station_id -> password")
    out: dict[str, str] = {}
    for sid, pw in data.items():
        if not isinstance(pw, str | int) or not 1 <= len(str(pw)) <= 64 or ":" in str(sid):
            raise ConfigError(str(path), f"{var}: {str(sid)[:48]}", "password must be a string of 1-64 characters")
        out[str(sid)] = str(pw)
    return out
