"""The VTN's OpenADR 3 REST API over httpx: OAuth2 client-credentials token, programs, events, reports.

Written against the OpenADR 3.0/3.1 REST API directly: ``openadr3-client`` (ElaadNL) needs Python ≥ 3.12
(gridcharge runs on 3.11) and is synchronous (requests). Polling only — subscriptions need the VTN to reach the
VEN (webhooks) or an MQTT broker, which a site behind NAT usually cannot offer. Responses are bounded in size
and must be JSON of the expected shape; anything else is a :class:`VtnError`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from gridcharge.shared.clock import Clock

log = logging.getLogger(__name__)

PAGE = 50  # the largest page OpenLEADR-rs serves
MAX_PAGES = 40  # 2,000 objects per list: more is a misconfigured VTN, not a site's programs


class VtnError(RuntimeError):
    """The VTN could not be reached or answered something unusable (the message says which)."""


class VtnClient:
    """One VEN's session with one VTN. ``token_url`` empty: asked from the VTN (``GET /auth/server``)."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        clock: Clock,
        *,
        token_url: str = "",
        timeout_s: float = 10.0,
        max_response_bytes: int = 4 * 1024 * 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id, self._secret = client_id, client_secret
        self.token_url = token_url
        self.clock = clock
        self.max_bytes = max_response_bytes
        self._http = httpx.AsyncClient(
            timeout=timeout_s, transport=transport, follow_redirects=False, headers={"Accept": "application/json"}
        )
        self._token: str | None = None
        self._token_expires_at = 0.0

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- HTTP -------------------------------------------------------------------------------------
    async def _send(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            async with self._http.stream(method, url, **kwargs) as resp:
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise VtnError(f"{method} {url}: response larger than {self.max_bytes} bytes")
                status = resp.status_code
        except httpx.HTTPError as exc:
            raise VtnError(f"{method} {url}: {type(exc).__name__}: {str(exc)[:200]}") from None
        if not body:
            return status, None
        try:
            return status, json.loads(body)
        except ValueError:
            if status >= 400:
                return status, None
            raise VtnError(f"{method} {url}: answer is not JSON (HTTP {status})") from None

    async def _bearer(self) -> str:
        if self._token is not None and self.clock.time() < self._token_expires_at - 30:
            return self._token
        if not self.token_url:
            status, info = await self._send("GET", f"{self.base_url}/auth/server")
            if status != 200 or not isinstance(info, dict) or not isinstance(info.get("tokenURL"), str):
                raise VtnError(f"GET /auth/server: no tokenURL (HTTP {status})")
            self.token_url = info["tokenURL"]
        status, tok = await self._send(
            "POST", self.token_url, data={"grant_type": "client_credentials"}, auth=(self.client_id, self._secret)
        )
        if status != 200 or not isinstance(tok, dict) or not isinstance(tok.get("access_token"), str):
            detail = (tok.get("error_description") or tok.get("error")) if isinstance(tok, dict) else ""
            raise VtnError(f"token request refused (HTTP {status}) {str(detail)[:120]}".rstrip())
        expires_in = tok.get("expires_in")
        ttl = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        self._token, self._token_expires_at = tok["access_token"], self.clock.time() + ttl
        return self._token

    async def _api(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None
    ) -> Any:
        for attempt in (0, 1):
            headers = {"Authorization": f"Bearer {await self._bearer()}"}
            status, data = await self._send(method, f"{self.base_url}{path}", params=params, json=body, headers=headers)
            if status == 401 and attempt == 0:  # token revoked or expired early: one fresh token, once
                self._token = None
                continue
            if status >= 400:
                detail = (data.get("detail") or data.get("title")) if isinstance(data, dict) else ""
                raise VtnError(f"{method} {path}: HTTP {status} {str(detail)[:160]}".rstrip())
            return data
        raise VtnError(f"{method} {path}: unauthorised")  # pragma: no cover - the loop returns or raises

    async def _list(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            data = await self._api("GET", path, {**(params or {}), "skip": page * PAGE, "limit": PAGE})
            if not isinstance(data, list):
                raise VtnError(f"GET {path}: expected a list")
            out.extend(o for o in data if isinstance(o, dict))
            if len(data) < PAGE:
                return out
        log.warning("VTN list truncated", extra={"path": path, "objects": len(out)})
        return out

    # -- OpenADR objects ----------------------------------------------------------------------------
    async def programs(self) -> list[dict[str, Any]]:
        return await self._list("/programs")

    async def events(self, program_id: str) -> list[dict[str, Any]]:
        return await self._list("/events", {"programID": program_id})

    async def post_report(self, report: dict[str, Any]) -> dict[str, Any]:
        data = await self._api("POST", "/reports", body=report)
        return data if isinstance(data, dict) else {}
