"""Who may call the operator HTTP APIs: bearer tokens (hashes from a mounted Secret, or env) and OIDC JWTs.

Two roles: `read-only` may GET, `operator` may also change things (POST/PUT/PATCH/DELETE). Without any credential
configured, reads stay open and every change is refused, unless GRIDCHARGE_API_OPEN_ACCESS=true (development),
so a forgotten Secret fails closed. Docs: docs/security.md.

Tokens: the file holds only SHA-256 digests (`{name: {role: operator, sha256: <hex>}}`); a presented token is
hashed and compared with every digest in constant time. Tokens are 256-bit random strings (`gridcharge
api-token`), so a plain SHA-256 suffices; a slow password hash would only make each request slower. The file is
re-read when it changes (Kubernetes updates mounted Secrets in place), so tokens rotate without a restart.

OIDC: RS256/ES256 (asymmetric only: an HS256 token signed with the public key must not pass) JWTs from an
identity provider, checked for signature (JWKS from a file or an https URL, cached, refetched at most every
`MIN_REFETCH_S` when an unknown `kid` shows up), `iss`, `aud`, `exp`; the role comes from a claim
(`GRIDCHARGE_OIDC_ROLES_CLAIM`, e.g. `realm_access.roles`) mapped by `GRIDCHARGE_OIDC_ROLE_MAP`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import jwt
import yaml
from gridcharge.shared.config import ENV_PREFIX, Settings
from gridcharge.shared.errors import ConfigError

log = logging.getLogger(__name__)

Role = Literal["read-only", "operator"]
ROLES: tuple[Role, ...] = ("read-only", "operator")
RANK = {"read-only": 1, "operator": 2}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
MIN_TOKEN_CHARS = 24
MIN_REFETCH_S = 30.0
RELOAD_CHECK_S = 5.0


@dataclass(frozen=True)
class Principal:
    """The caller as the audit log names it."""

    subject: str  # token name, or the JWT `sub`
    role: Role
    method: Literal["token", "oidc", "open-access", "anonymous"]
    name: str = ""  # JWT preferred_username / email, when given


@dataclass(frozen=True)
class Denied:
    """Why a request is refused: 401 (no or bad credential) or 403 (credential without the role)."""

    status: int
    reason: Literal["unauthenticated", "forbidden"]
    detail: str


def required_role(method: str) -> Role:
    return "read-only" if method.upper() in SAFE_METHODS else "operator"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh 256-bit bearer token (URL-safe, no ':' or ',': it can go into GRIDCHARGE_API_TOKENS)."""
    return secrets.token_urlsafe(32)


# ------------------------------------------------------------------------------------------ static tokens


@dataclass(frozen=True)
class _TokenEntry:
    name: str
    role: Role
    digest: bytes


def _role(value: Any, where: str, key: str) -> Role:
    if value not in ROLES:
        raise ConfigError(where, key, f"role must be one of {', '.join(ROLES)} (got {value!r})")
    return value


def parse_token_file(text: str, where: str) -> list[_TokenEntry]:
    """`{name: {role: operator, sha256: <64 hex>}}`: hashes only, never the tokens themselves."""
    var = f"{ENV_PREFIX}API_TOKENS_FILE"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(where, var, f"invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(where, var, "expected a mapping name -> {role, sha256}")
    out = []
    for name, entry in data.items():
        key = f"{name}"
        if not isinstance(entry, dict) or set(entry) != {"role", "sha256"}:
            raise ConfigError(
                where,
                key,
                "expected {role: operator|read-only, sha256: <hex digest of the token>} "
                "(make one with `gridcharge api-token NAME --role ROLE`)",
            )
        digest = str(entry["sha256"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(where, f"{key}.sha256", "not a SHA-256 hex digest (64 hex characters)")
        out.append(_TokenEntry(str(name), _role(entry["role"], where, f"{key}.role"), bytes.fromhex(digest)))
    return out


def parse_token_env(value: str) -> list[_TokenEntry]:
    """GRIDCHARGE_API_TOKENS: `name:role:token[,name:role:token...]` (plain tokens, hashed here)."""
    var = f"{ENV_PREFIX}API_TOKENS"
    out = []
    for i, item in enumerate(p.strip() for p in value.split(",")):
        if not item:
            continue
        parts = item.split(":", 2)
        if len(parts) != 3:
            raise ConfigError("environment", var, f"entry {i + 1}: expected name:role:token")
        name, role, token = parts
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                "environment",
                var,
                f"entry {i + 1} ({name}): token shorter than {MIN_TOKEN_CHARS} "
                "characters (make one with `gridcharge api-token`)",
            )
        out.append(
            _TokenEntry(
                name,
                _role(role, "environment", f"{var} entry {i + 1} ({name})"),
                hashlib.sha256(token.encode()).digest(),
            )
        )
    return out


class TokenStore:
    """Static tokens from env and a file that is re-read when its mtime changes (failed reloads keep the old)."""

    def __init__(self, env_entries: list[_TokenEntry], path: Path | None) -> None:
        self.env_entries, self.path = env_entries, path
        self.file_entries: list[_TokenEntry] = []
        self._mtime: float | None = None
        self._checked = 0.0
        if path is not None:
            self._load(initial=True)

    @property
    def configured(self) -> bool:
        return bool(self.env_entries) or self.path is not None

    def _load(self, initial: bool = False) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
            entries = parse_token_file(text, str(self.path))
        except OSError as exc:
            if initial:
                raise ConfigError(
                    str(self.path), f"{ENV_PREFIX}API_TOKENS_FILE", f"cannot read: {exc.strerror or exc}"
                ) from None
            log.error("API token file unreadable; keeping the tokens loaded before", extra={"path": str(self.path)})
            return
        except ConfigError as exc:
            if initial:
                raise
            log.error("API token file invalid; keeping the tokens loaded before", extra={"error": str(exc)})
            return
        self.file_entries, self._mtime = entries, st.st_mtime
        if not initial:
            log.info("API token file reloaded", extra={"tokens": len(entries)})

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            self._load()

    def lookup(self, token: str) -> _TokenEntry | None:
        """Compare the digest with every entry (no early exit: timing says nothing about which one matched)."""
        self._maybe_reload()
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for entry in (*self.env_entries, *self.file_entries):
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return found


# ------------------------------------------------------------------------------------------ OIDC


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_role_map(value: str) -> dict[str, Role]:
    var = f"{ENV_PREFIX}OIDC_ROLE_MAP"
    if not value.strip():
        return {r: r for r in ROLES}
    out: dict[str, Role] = {}
    for item in (p.strip() for p in value.split(",")):
        if not item:
            continue
        claim_value, sep, role = item.rpartition("=")
        if not sep or not claim_value:
            raise ConfigError("environment", var, f"entry {item!r}: expected <claim value>=<role>")
        out[claim_value] = _role(role, "environment", var)
    return out


class JwksCache:
    """Signing keys by `kid`, from a file (re-read on change) or a URL (cached for `ttl_s`)."""

    def __init__(self, url: str, path: Path | None, ttl_s: float) -> None:
        self.url, self.path, self.ttl_s = url, path, ttl_s
        self.keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -1e18
        self._mtime: float | None = None
        self._lock = asyncio.Lock()

    @staticmethod
    def parse(data: Any, where: str) -> dict[str, jwt.PyJWK]:
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError(f'{where}: not a JWKS document ({{"keys": [...]}})')
        out: dict[str, jwt.PyJWK] = {}
        for i, k in enumerate(data["keys"]):
            if not isinstance(k, dict) or k.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK.from_dict(k)
            except jwt.PyJWTError as exc:
                log.warning("JWKS key skipped", extra={"source": where, "index": i, "error": str(exc)[:200]})
                continue
            out[str(k.get("kid", f"#{i}"))] = key
        return out

    def load_file(self, initial: bool = False) -> None:
        assert self.path is not None
        var = f"{ENV_PREFIX}OIDC_JWKS_FILE"
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime == self._mtime:
                return
            keys = self.parse(json.loads(self.path.read_text(encoding="utf-8")), str(self.path))
        except (OSError, ValueError) as exc:
            if initial:
                problem = exc.strerror if isinstance(exc, OSError) else str(exc).removeprefix(f"{self.path}: ")
                raise ConfigError(str(self.path), var, f"cannot use: {problem}") from None
            log.error("JWKS file unusable; keeping the keys loaded before", extra={"error": str(exc)[:200]})
            return
        if not keys and initial:
            raise ConfigError(str(self.path), var, "no signing keys in the JWKS")
        self.keys, self._mtime = keys, mtime

    async def fetch(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
                resp = await client.get(self.url)
                resp.raise_for_status()
                keys = self.parse(resp.json(), self.url)
        except (httpx.HTTPError, ValueError) as exc:
            log.error(
                "JWKS fetch failed; keeping the keys fetched before", extra={"url": self.url, "error": str(exc)[:200]}
            )
            return
        self.keys = keys
        log.info("JWKS fetched", extra={"url": self.url, "keys": len(keys)})

    async def get(self, kid: str | None) -> jwt.PyJWK | None:
        if self.path is not None:
            self.load_file()
        else:
            async with self._lock:
                age = time.monotonic() - self._fetched_at
                unknown = kid is not None and kid not in self.keys
                if age > self.ttl_s or (unknown and age > MIN_REFETCH_S):
                    self._fetched_at = time.monotonic()
                    await self.fetch()
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)


class OidcVerifier:
    def __init__(self, st: Settings) -> None:
        if not st.oidc_audience:
            raise ConfigError(
                "environment",
                f"{ENV_PREFIX}OIDC_AUDIENCE",
                "required with GRIDCHARGE_OIDC_ISSUER (tokens for other clients must not pass)",
            )
        if bool(st.oidc_jwks_url) == (st.oidc_jwks_file is not None):
            raise ConfigError(
                "environment",
                f"{ENV_PREFIX}OIDC_JWKS_URL",
                "give GRIDCHARGE_OIDC_JWKS_URL or GRIDCHARGE_OIDC_JWKS_FILE (one of them)",
            )
        if st.oidc_jwks_url:
            u = urlsplit(st.oidc_jwks_url)
            if (
                not u.hostname
                or u.scheme not in ("https", "http")
                or (u.scheme == "http" and not _is_loopback(u.hostname))
            ):
                raise ConfigError(
                    "environment",
                    f"{ENV_PREFIX}OIDC_JWKS_URL",
                    "must be an https URL (plain http only on loopback, for tests)",
                )
        algs = [a.strip() for a in st.oidc_algorithms.split(",") if a.strip()]
        bad = [a for a in algs if a not in ASYMMETRIC]
        if bad or not algs:
            raise ConfigError(
                "environment",
                f"{ENV_PREFIX}OIDC_ALGORITHMS",
                f"only asymmetric algorithms ({', '.join(sorted(ASYMMETRIC))}); got {bad or algs}",
            )
        self.issuer, self.audience, self.algorithms = st.oidc_issuer, st.oidc_audience, algs
        self.leeway_s = st.oidc_leeway_s
        self.roles_claim = st.oidc_roles_claim
        self.role_map = parse_role_map(st.oidc_role_map)
        self.jwks = JwksCache(st.oidc_jwks_url, st.oidc_jwks_file, st.oidc_jwks_cache_s)
        if st.oidc_jwks_file is not None:
            self.jwks.load_file(initial=True)

    def _claim(self, claims: Mapping[str, Any]) -> Any:
        cur: Any = claims
        for part in self.roles_claim.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        return cur

    def role_of(self, claims: Mapping[str, Any]) -> Role | None:
        value = self._claim(claims)
        values = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
        roles: list[Role] = [self.role_map[v] for v in values if isinstance(v, str) and v in self.role_map]
        if not roles:
            return None
        return "operator" if "operator" in roles else "read-only"

    async def verify(self, token: str) -> Principal | Denied:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Denied(401, "unauthenticated", "invalid bearer token")
        alg = header.get("alg")
        if alg not in self.algorithms:
            return Denied(401, "unauthenticated", f"token algorithm {str(alg)[:16]!r} not accepted")
        key = await self.jwks.get(header.get("kid"))
        if key is None:
            return Denied(401, "unauthenticated", "token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            return Denied(401, "unauthenticated", f"token rejected: {str(exc)[:120]}")
        role = self.role_of(claims)
        sub = str(claims["sub"])[:128]
        name = str(claims.get("preferred_username") or claims.get("email") or "")[:128]
        if role is None:
            return Denied(
                403, "forbidden", f"token of {sub!r} carries no gridcharge role in claim {self.roles_claim!r}"
            )
        return Principal(subject=sub, role=role, method="oidc", name=name)


# ------------------------------------------------------------------------------------------ the gate


class ApiAuth:
    """Decides per request: who is calling, and may they use this method?"""

    def __init__(
        self, tokens: TokenStore | None = None, oidc: OidcVerifier | None = None, open_access: bool = False
    ) -> None:
        self.tokens = tokens or TokenStore([], None)
        self.oidc = oidc
        self.open_access = open_access

    @classmethod
    def from_settings(cls, st: Settings) -> ApiAuth:
        tokens = TokenStore(parse_token_env(st.api_tokens.get_secret_value()), st.api_tokens_file)
        oidc = OidcVerifier(st) if st.oidc_issuer else None
        if not st.oidc_issuer and (st.oidc_jwks_url or st.oidc_jwks_file or st.oidc_audience):
            raise ConfigError(
                "environment", f"{ENV_PREFIX}OIDC_ISSUER", "required when any other GRIDCHARGE_OIDC_* setting is given"
            )
        return cls(tokens, oidc, st.api_open_access)

    @classmethod
    def with_tokens(cls, **tokens: tuple[Role, str]) -> ApiAuth:
        """For tests and embedded hosts: name=(role, token)."""
        entries = [_TokenEntry(n, r, hashlib.sha256(t.encode()).digest()) for n, (r, t) in tokens.items()]
        return cls(TokenStore(entries, None))

    @property
    def configured(self) -> bool:
        return self.tokens.configured or self.oidc is not None

    def describe(self) -> str:
        parts = []
        if self.tokens.configured:
            parts.append(f"{len(self.tokens.env_entries) + len(self.tokens.file_entries)} bearer token(s)")
        if self.oidc is not None:
            parts.append(f"OIDC issuer {self.oidc.issuer}")
        if self.open_access:
            parts.append("OPEN ACCESS (development)")
        return ", ".join(parts) or "no credentials: reads open, changes refused"

    async def authenticate(self, method: str, authorization: str | None) -> Principal | Denied:
        need = required_role(method)
        if not authorization:
            if self.open_access:
                return Principal("anonymous", "operator", "open-access")
            if not self.configured:
                if need == "read-only":
                    return Principal("anonymous", "read-only", "anonymous")
                return Denied(
                    403,
                    "forbidden",
                    "changes through the operator API are refused: no API credentials "
                    "are configured (GRIDCHARGE_API_TOKENS_FILE, GRIDCHARGE_API_TOKENS or "
                    "GRIDCHARGE_OIDC_*; see docs/security.md)",
                )
            return Denied(401, "unauthenticated", "bearer token required")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential or len(credential) > 8192:
            return Denied(401, "unauthenticated", "expected 'Authorization: Bearer <token>'")
        principal: Principal | Denied
        if credential.count(".") == 2 and self.oidc is not None:
            principal = await self.oidc.verify(credential)
        else:
            entry = self.tokens.lookup(credential)
            principal = (
                Principal(entry.name, entry.role, "token")
                if entry is not None
                else Denied(401, "unauthenticated", "invalid bearer token")
            )
        if isinstance(principal, Denied):
            return principal
        if RANK[principal.role] < RANK[need]:
            return Denied(
                403, "forbidden", f"{principal.subject} has role {principal.role}; {method.upper()} needs {need}"
            )
        return principal


def token_cli(argv: list[str] | None = None) -> int:
    """`gridcharge api-token NAME --role ROLE`: print a new token once (stderr) and its file entry (stdout)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="gridcharge api-token",
        description="make an operator API bearer token and its GRIDCHARGE_API_TOKENS_FILE entry",
    )
    p.add_argument("name", help="who holds the token (shows in the audit log)")
    p.add_argument("--role", choices=ROLES, default="read-only")
    args = p.parse_args(argv)
    token = new_token()
    print(f"token for {args.name} (shown once, store it now): {token}", file=sys.stderr)
    print(f"{args.name}: {{role: {args.role}, sha256: {token_digest(token)}}}")
    return 0
