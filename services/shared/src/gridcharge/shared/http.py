"""The HTTP edge every service exposes: /metrics (Prometheus), /healthz (process alive) and /readyz
(dependencies reachable), plus whatever operator API routers the service mounts.

The edge is also where the operator APIs are protected (docs/security.md), so no router has to remember it:
- authentication and roles (`ApiAuth`): GET needs read-only, every other method operator; /metrics, /healthz,
  /readyz and the API description (/docs, /openapi.json) stay open for probes and Prometheus;
- an audit event for every authenticated change request (`AuditSink`);
- a request-body limit enforced while the body streams in (413 before it is all in memory);
- per-connection deadlines for the request headers and body and a cap on open connections (total and per
  client address), so half-sent requests (slowloris) cannot pile up and starve the process of file descriptors
  it needs for OCPP;
- optionally /metrics and the probes on their own port (GRIDCHARGE_OPS_PORT), away from the API port.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from gridcharge.shared.audit import NOTE_KEY, PRINCIPAL_KEY, AuditSink
from gridcharge.shared.auth import SAFE_METHODS, ApiAuth, Denied
from gridcharge.shared.config import MIB, Settings
from gridcharge.shared.errors import ConfigError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], bool | Awaitable[bool]]
OPS_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
PUBLIC_PATHS = OPS_PATHS | {"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"}
AUDIT_BODY_BYTES = 4096

HTTP_CONNECTIONS = Gauge("gridcharge_http_connections", "Open HTTP connections per listener (api, ops).", ["listener"])
HTTP_REJECTIONS = Counter(
    "gridcharge_http_rejections_total",
    "HTTP connections and requests refused by the edge (connection_limit, header_timeout, body_timeout, "
    "body_too_large, unauthenticated, forbidden).",
    ["reason"],
)


@dataclass(frozen=True)
class EdgeLimits:
    """Resource limits of one HTTP listener (defaults = the settings' defaults)."""

    max_body_bytes: int = MIB
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 256
    max_connections_per_ip: int = 64

    @classmethod
    def from_settings(cls, st: Settings) -> EdgeLimits:
        return cls(
            st.http_max_body_bytes,
            st.http_header_timeout_s,
            st.http_body_timeout_s,
            st.http_keepalive_timeout_s,
            st.http_max_connections,
            st.http_max_connections_per_ip,
        )


class Health:
    """Named readiness checks; /readyz is 200 only when all pass."""

    def __init__(self) -> None:
        self.checks: dict[str, ReadinessCheck] = {}

    def add(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    async def evaluate(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for name, check in self.checks.items():
            try:
                res = check()
                out[name] = bool(await res) if inspect.isawaitable(res) else bool(res)
            except Exception:
                out[name] = False
        return out


# ------------------------------------------------------------------------------------------ ASGI apps


def _add_ops_routes(app: FastAPI, health: Health) -> None:
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(response: Response) -> dict[str, object]:
        checks = await health.evaluate()
        ready = all(checks.values())
        response.status_code = 200 if ready else 503
        return {"ready": ready, "checks": checks}


def _declare_bearer_auth(app: FastAPI) -> None:
    """OpenAPI says the API takes a bearer token, so /docs offers "Authorize"."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "API token (GRIDCHARGE_API_TOKENS_FILE) or OIDC access token",
                }
            }
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _json_safe(value: Any) -> Any:
    """NaN/inf (which JSON cannot carry) as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, but one that can echo a NaN/1e400 input: its own handler fails to encode it and answers 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": _json_safe(jsonable_encoder(errors))}, status_code=422)


def create_app(
    title: str,
    health: Health,
    routers: list[APIRouter] | None = None,
    *,
    auth: ApiAuth | None = None,
    audit: AuditSink | None = None,
    limits: EdgeLimits | None = None,
    ops: bool = True,
) -> FastAPI:
    """The service's HTTP app. Without `auth`, no credential is configured: reads open, changes refused."""
    app = FastAPI(title=title, version="0.1.0")
    if ops:
        _add_ops_routes(app, health)
    for r in routers or []:
        app.include_router(r)
    _declare_bearer_auth(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(
        EdgeMiddleware, auth=auth or ApiAuth(), audit=audit, max_body_bytes=(limits or EdgeLimits()).max_body_bytes
    )
    # build the API description now: generated on the first GET /openapi.json it blocks the event loop
    # (~18 ms on the dev machine), stalling every OCPP station on the loop, for a request any client can make
    app.openapi()
    return app


def create_ops_app(health: Health, limits: EdgeLimits | None = None) -> FastAPI:
    """Only /metrics, /healthz and /readyz (the GRIDCHARGE_OPS_PORT listener)."""
    app = FastAPI(title="gridcharge ops", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)
    _add_ops_routes(app, health)
    app.add_middleware(
        EdgeMiddleware, auth=ApiAuth(), audit=None, max_body_bytes=(limits or EdgeLimits()).max_body_bytes
    )
    return app


class _LogBudget:
    """At most `per_minute` log lines of one kind: a credential-guessing flood must not flood the logs too."""

    def __init__(self, per_minute: int = 30) -> None:
        self.per_minute, self.window, self.used, self.dropped = per_minute, 0.0, 0, 0

    def take(self) -> bool:
        now = time.monotonic()
        if now - self.window >= 60:
            if self.dropped:
                log.warning("operator API: more refused requests not logged", extra={"suppressed": self.dropped})
            self.window, self.used, self.dropped = now, 0, 0
        self.used += 1
        if self.used > self.per_minute:
            self.dropped += 1
            return False
        return True


class EdgeMiddleware:
    """Body limit, authentication/roles and audit for every request (pure ASGI: the body is never buffered)."""

    def __init__(self, app: ASGIApp, auth: ApiAuth, audit: AuditSink | None, max_body_bytes: int) -> None:
        self.app, self.auth, self.audit, self.max_body = app, auth, audit, max_body_bytes
        self._log_budget = _LogBudget()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = Headers(scope=scope)
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _plain(send, 400, "invalid Content-Length", close=True)
                return
            if int(declared) > self.max_body:
                HTTP_REJECTIONS.labels(reason="body_too_large").inc()
                await _plain(send, 413, f"request body larger than {self.max_body} bytes", close=True)
                return
        client = scope.get("client") or ("", 0)
        if path in PUBLIC_PATHS:
            principal = None
        else:
            result = await self.auth.authenticate(method, headers.get("authorization"))
            if isinstance(result, Denied):
                HTTP_REJECTIONS.labels(reason=result.reason).inc()
                if self._log_budget.take():
                    log.warning(
                        "operator API request refused",
                        extra={
                            "status": result.status,
                            "reason": result.detail,
                            "method": method,
                            "path": path[:256],
                            "client": str(client[0]),
                        },
                    )
                extra = [(b"www-authenticate", b'Bearer realm="gridcharge"')] if result.status == 401 else []
                await _plain(send, result.status, result.detail, close=has_body, headers=extra)
                return
            principal = result
            scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        audited = principal is not None and self.audit is not None and method not in SAFE_METHODS
        captured = bytearray()
        received = 0
        too_large = False
        status = 0

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_body:
                    too_large = True
                    HTTP_REJECTIONS.labels(reason="body_too_large").inc()
                    raise HTTPException(413, f"request body larger than {self.max_body} bytes")
                if audited and len(captured) < AUDIT_BODY_BYTES:
                    captured.extend(chunk[: AUDIT_BODY_BYTES - len(captured)])
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if too_large:  # the rest of the body is unread: do not keep reading it for a next request
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:  # raised by limited_receive outside FastAPI's own handling
            if status:
                raise
            await _plain(send, exc.status_code, str(exc.detail), close=True)
            status = exc.status_code
        finally:
            if audited and principal is not None and self.audit is not None:
                query = scope.get("query_string", b"").decode("latin-1")
                note = scope.get("state", {}).get(NOTE_KEY)
                ev = self.audit.event(
                    principal, str(client[0]), method, path, query, bytes(captured), status or 500, note
                )
                await self.audit.record(ev)


async def _plain(
    send: Send, status: int, detail: str, close: bool = False, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    if close:
        hdrs.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# ------------------------------------------------------------------------------------------ connections

_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\n"
    b"connection: close\r\n\r\nrequest timeout\n"
)
_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\n"
    b"connection: close\r\n\r\ntoo many connections\n"
)


LINGER_S = 2.0
LINGER_BYTES = 16 * MIB


class _LingeringTransport:
    """The transport as uvicorn sees it; `close()` goes through the protocol, which may half-close first."""

    def __init__(self, inner: asyncio.Transport, close: Callable[[], None]) -> None:
        self._inner, self._close, self._closing = inner, close, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def is_closing(self) -> bool:
        return self._closing or self._inner.is_closing()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._close()


class ConnectionGuard:
    """Open connections of one listener, in total and per client address."""

    def __init__(self, listener: str, max_total: int, max_per_ip: int) -> None:
        self.listener, self.max_total, self.max_per_ip = listener, max_total, max_per_ip
        self.total = 0
        self.per_ip: dict[str, int] = {}
        HTTP_CONNECTIONS.labels(listener=listener).set(0)

    def admit(self, ip: str) -> bool:
        if self.total >= self.max_total or self.per_ip.get(ip, 0) >= self.max_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        HTTP_CONNECTIONS.labels(listener=self.listener).set(self.total)
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        n = self.per_ip.get(ip, 0) - 1
        if n > 0:
            self.per_ip[ip] = n
        else:
            self.per_ip.pop(ip, None)
        HTTP_CONNECTIONS.labels(listener=self.listener).set(self.total)


def guarded_protocol(guard: ConnectionGuard, limits: EdgeLimits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol plus the connection cap and header/body deadlines uvicorn lacks (it waits forever
    for the first request on a connection, and for a body that trickles in)."""

    class GuardedH11Protocol(H11Protocol):
        _admitted = False
        _ip = ""
        _timer: asyncio.TimerHandle | None = None
        _timer_kind = ""
        _raw: asyncio.Transport
        _lingering = False
        _linger_bytes = 0
        _linger_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._raw = transport
            super().connection_made(_LingeringTransport(transport, self._close_or_linger))  # type: ignore[arg-type]
            self._ip = self.client[0] if self.client else ""
            self._admitted = guard.admit(self._ip)
            if not self._admitted:
                HTTP_REJECTIONS.labels(reason="connection_limit").inc()
                transport.write(_503)
                transport.close()
                return
            self._arm("header_timeout", limits.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._linger_timer is not None:
                self._linger_timer.cancel()
            if self._admitted:
                self._admitted = False
                guard.release(self._ip)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._admitted:
                return
            if self._lingering:  # the rest of a refused upload: dropped unparsed, never buffered
                self._linger_bytes += len(data)
                if self._linger_bytes > LINGER_BYTES:
                    self._raw.close()
                return
            super().data_received(data)
            self._follow_request()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle time that follows
            self._disarm()
            if self.conn.their_state is h11.SEND_BODY:  # answered early: the rest of the body is still bounded
                self._arm("body_timeout", limits.body_timeout_s)

        def _close_or_linger(self) -> None:
            """Closing while the client still sends a body we refused (413, 401) makes the kernel answer with a
            reset, which throws our response away at the client. Half-close instead: the response goes out with
            a FIN, the rest of the upload is read and dropped for LINGER_S (at most LINGER_BYTES), then close."""
            raw = self._raw
            if self.conn.their_state is not h11.SEND_BODY or raw.is_closing() or not raw.can_write_eof():
                raw.close()
                return
            self._disarm()
            self._lingering = True
            try:
                raw.write_eof()
            except (OSError, RuntimeError):
                raw.close()
                return
            raw.resume_reading()
            self._linger_timer = self.loop.call_later(LINGER_S, raw.close)

        def _follow_request(self) -> None:
            if self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                if self._timer_kind != "header_timeout":  # first bytes of a request: deadline for its headers
                    self._arm("header_timeout", limits.header_timeout_s)
            elif state is h11.SEND_BODY:
                if self._timer_kind != "body_timeout":
                    self._arm("body_timeout", limits.body_timeout_s)
            else:  # request complete: the app is working on it, no client deadline
                self._disarm()

        def _arm(self, kind: str, seconds: float) -> None:
            self._disarm()
            self._timer_kind = kind
            self._timer = self.loop.call_later(seconds, self._expired, kind)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_kind = None, ""

        def _expired(self, kind: str) -> None:
            self._timer, self._timer_kind = None, ""
            if self.transport.is_closing():
                return
            HTTP_REJECTIONS.labels(reason=kind).inc()
            if self.cycle is None or not self.cycle.response_started:
                self._raw.write(_408)
            self._raw.close()

    return GuardedH11Protocol


def os_error_text(exc: OSError) -> str:
    """'Address already in use' rather than a library's wrapped sentence."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket, bound here so a busy or bad port is an error we can word (uvicorn would sys.exit)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn inside the service's event loop; port 0 picks a free port (see `.port`)."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        limits: EdgeLimits | None = None,
        listener: str = "api",
        port_var: str = "GRIDCHARGE_HTTP_PORT",
    ) -> None:
        limits = limits or EdgeLimits()
        self.host, self.requested_port, self.port_var = host, port, port_var
        self.guard = ConnectionGuard(listener, limits.max_connections, limits.max_connections_per_ip)
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                ws="none",
                http=guarded_protocol(self.guard, limits),
                timeout_keep_alive=max(1, math.ceil(limits.keepalive_timeout_s)),
                timeout_graceful_shutdown=5,
            )
        )
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    def bind(self) -> None:
        """Take the port now (before the services start), so a busy port fails start-up cleanly."""
        if self._sock is not None:
            return
        try:
            self._sock = bind_socket(self.host, self.requested_port)
        except OSError as exc:
            raise ConfigError(
                "start-up", self.port_var, f"cannot listen on {self.host}:{self.requested_port}: {os_error_text(exc)}"
            ) from None

    async def start(self) -> None:
        self.bind()
        assert self._sock is not None
        # _serve() rather than serve(): serve() captures SIGTERM/SIGINT, which belong to the host process
        self._task = asyncio.create_task(self.server._serve(sockets=[self._sock]), name="http")
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        elif self._sock is not None:  # bound, never served (start-up failed later)
            self._sock.close()
