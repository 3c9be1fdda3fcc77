"""Where idToken decisions come from (setting `authorization`).

- `accept-all` (default): every token is Accepted, as before this module existed. gridcharge manages grid
  capacity; at most of its sites another system (the station's own local list, a CSMS behind a proxy,
  free vend) decides who may charge, and a load-management upgrade must not stop cars charging.
- `local-list`: the store hash `gw:id-tokens` (shared by every replica, changeable at run time), then the
  `id_tokens_file`, then an `Upstream` if one is plugged in; a token nobody knows is Invalid. 2.0.1
  tokens of type NoAuthorization (the station does no authorization) are Accepted.

`Upstream` is the pass-through seam for a system that owns authorization (the proxy mode can implement
it): it answers a Decision, or None for "no opinion" (unknown token, unreachable), which ends as Invalid.

Entries: `python -m gridcharge.gateway.adapters.authorization TOKEN STATUS [EXPIRY] [GROUP]` prints the
JSON to store with `HSET gw:id-tokens TOKEN '<json>'` (under the deployment's store prefix).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Protocol

import yaml
from gridcharge.gateway.core.authorization import (
    ACCEPTED,
    INVALID,
    NO_AUTHORIZATION,
    AuthRequest,
    Decision,
    TokenEntry,
    decide,
)
from gridcharge.gateway.core.errors import safe
from gridcharge.shared.clock import Clock
from gridcharge.shared.store.base import Store

log = logging.getLogger(__name__)

STORE_HASH = "gw:id-tokens"


class Authorizer(Protocol):
    async def authorize(self, req: AuthRequest) -> Decision: ...


class Upstream(Protocol):
    """An external authorization system (pass-through). None = no opinion."""

    async def authorize(self, req: AuthRequest) -> Decision | None: ...


class NoUpstream:
    """The default: no upstream system; tokens the local list does not know are Invalid."""

    async def authorize(self, req: AuthRequest) -> Decision | None:
        return None


class AcceptAll:
    async def authorize(self, req: AuthRequest) -> Decision:
        return ACCEPTED


def load_entries(path: Path | None) -> dict[str, TokenEntry]:
    """The `id_tokens_file`: YAML/JSON {token: status | {status, expiry, group}} (ValueError names the entry)."""
    if path is None:
        return {}
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping id_token -> status or {{status, expiry, group}}")
    out = {}
    for token, raw in data.items():
        try:
            out[str(token)] = TokenEntry.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{path}: id token {safe(str(token), 36)}: {exc}") from None
    return out


class LocalList:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        entries: dict[str, TokenEntry],
        upstream: Upstream | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.store, self.clock, self.entries = store, clock, entries
        self.upstream: Upstream = upstream or NoUpstream()
        self.timeout_s = timeout_s

    async def _stored(self, token: str) -> TokenEntry | None:
        try:
            raw = await asyncio.wait_for(self.store.hget(STORE_HASH, token), self.timeout_s)
        except Exception:
            log.warning("id token lookup in the store failed; using the file only", exc_info=True)
            return None
        if raw is None:
            return None
        try:
            return TokenEntry.parse(json.loads(raw))
        except (ValueError, TypeError):
            log.warning("unreadable id token entry in the store", extra={"id_token": safe(token, 36)})
            return TokenEntry("Invalid")  # a broken entry must not let a token in

    async def authorize(self, req: AuthRequest) -> Decision:
        if req.token_type == NO_AUTHORIZATION:
            return ACCEPTED
        now = self.clock.now()
        entry = await self._stored(req.id_token) or self.entries.get(req.id_token)
        if entry is not None:
            return decide(entry, now)
        try:
            answer = await asyncio.wait_for(self.upstream.authorize(req), self.timeout_s)
        except Exception:
            log.warning("upstream authorization failed", exc_info=True)
            answer = None
        return answer if answer is not None else INVALID


if __name__ == "__main__":
    args = sys.argv[1:]
    if not 2 <= len(args) <= 4:
        raise SystemExit("usage: python -m gridcharge.gateway.adapters.authorization TOKEN STATUS [EXPIRY] [GROUP]")
    raw = {
        "status": args[1],
        "expiry": args[2] if len(args) > 2 and args[2] else None,
        "group": args[3] if len(args) > 3 else "",
    }
    print(json.dumps(TokenEntry.parse(raw).to_json()))
