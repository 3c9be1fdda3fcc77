"""The OCPP WebSocket endpoint `ws[s]://HOST:PORT/ocpp/{station_id}` (subprotocols ocpp1.6, ocpp2.0.1, ocpp2.1).

At the HTTP upgrade: path and station id checked, connection caps (per IP and total), security profile
(1: HTTP Basic, 2: TLS + Basic, 3: mTLS with the certificate CN = station id), unknown stations → 404
(or a Pending/Rejected boot, per settings). Failed Basic auth backs off and locks out per station id and
per source IP (`core.lockout`). After the upgrade: ownership claimed in the registry, the station's boot
status restored from it (a reconnect needs no new boot), an older connection of the same station closed
(a newly authenticated one replaces it), Connected / Disconnected events published. Frames above
`max_message_bytes` close the socket with 1009. Profile 0 on a non-loopback address logs one warning.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import logging
import math
import re
import ssl
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from gridcharge.gateway.adapters.context import GatewayContext
from gridcharge.gateway.adapters.credentials import Credentials
from gridcharge.gateway.adapters.dispatcher import Dispatcher
from gridcharge.gateway.adapters.metrics import AUTH_FAILURES, AUTH_LOCKOUTS, CONNECTED, REJECTED
from gridcharge.gateway.adapters.registry import Registry
from gridcharge.gateway.adapters.upstream import Proxy
from gridcharge.gateway.core.boot import Registration
from gridcharge.gateway.core.errors import Version, safe
from gridcharge.gateway.core.lockout import AuthBackoff, Policy
from gridcharge.gateway.handlers.base import StationSession
from gridcharge.gateway.handlers.v16 import V16Session
from gridcharge.gateway.handlers.v21 import V21Session
from gridcharge.gateway.handlers.v201 import V201Session
from gridcharge.station.v1 import station_pb2
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

log = logging.getLogger(__name__)

SUBPROTOCOLS = [Subprotocol("ocpp2.1"), Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")]
SESSION_CLASSES: dict[Version, type[StationSession]] = {
    Version.V16: V16Session,
    Version.V201: V201Session,
    Version.V21: V21Session,
}
# OCPP 2.0.1 identifierString plus what 1.6 deployments use; 48 = topology limit
STATION_ID = re.compile(r"[A-Za-z0-9*\-_=:+|@.]{1,48}")


def tls_context(cert: Any, key: Any, ca: Any | None, require_client_cert: bool) -> ssl.SSLContext:
    """Server TLS context: TLS 1.2+ only; with `require_client_cert` the station must present a cert from `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if require_client_cert:
        if ca is None:
            raise ValueError("security profile 3 needs GRIDCHARGE_TLS_CA")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(ca))
    return ctx


PROFILE_0_WARNING = (
    "SECURITY: security profile 0 on {host}:{port}: station connections are not "
    "authenticated; any client that knows a station id can take over that station and receive "
    "its charging profiles. Use it on a trusted network only; set GRIDCHARGE_SECURITY_PROFILE "
    "to 1, 2 or 3 elsewhere (docs/gateway.md)."
)


def is_loopback(host: str) -> bool:
    """Is the OCPP endpoint bound to loopback only (development: nothing else can reach it)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def station_from_path(path: str) -> str | None:
    path = path.split("?", 1)[0]
    if not path.startswith("/ocpp/"):
        return None
    sid = unquote(path[len("/ocpp/") :])
    return sid if STATION_ID.fullmatch(sid) else None


def peer_common_name(connection: ServerConnection) -> str | None:
    obj = connection.transport.get_extra_info("ssl_object")
    cert = obj.getpeercert() if obj is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class OcppServer:
    def __init__(
        self,
        ctx: GatewayContext,
        registry: Registry,
        dispatcher: Dispatcher,
        sessions: dict[str, StationSession],
        credentials: Credentials,
        proxy: Proxy | None = None,
    ) -> None:
        self.ctx, self.registry, self.dispatcher, self.sessions = ctx, registry, dispatcher, sessions
        self.proxy = proxy  # proxy mode: every station also gets a link to the upstream CSMS
        self.credentials = credentials
        self.per_ip: dict[str, int] = defaultdict(int)
        st = ctx.settings
        policy = Policy(
            base_delay_s=st.auth_backoff_base_s,
            max_delay_s=st.auth_backoff_max_s,
            lockout_after=st.auth_lockout_after,
            lockout_s=st.auth_lockout_s,
        )
        self.station_auth = AuthBackoff(policy)  # failed Basic auth per station id ...
        self.ip_auth = AuthBackoff(replace(policy, lockout_after=st.auth_ip_lockout_after))  # ... and per IP
        self.open_connections = 0
        self.server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    async def start(self) -> None:
        st = self.ctx.settings
        ssl_ctx = None
        if st.security_profile >= 2:
            if st.tls_cert is None or st.tls_key is None:
                raise ValueError("security profiles 2 and 3 need GRIDCHARGE_TLS_CERT and GRIDCHARGE_TLS_KEY")
            ssl_ctx = tls_context(st.tls_cert, st.tls_key, st.tls_ca, st.security_profile == 3)
        if st.security_profile == 0 and not is_loopback(st.ocpp_host):
            log.warning(PROFILE_0_WARNING.format(host=st.ocpp_host, port=st.ocpp_port))
        self.server = await serve(
            self._handler,
            st.ocpp_host,
            st.ocpp_port,
            subprotocols=SUBPROTOCOLS,
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            max_size=st.max_message_bytes,
            max_queue=4,
            compression=None,
            ssl=ssl_ctx,
            ping_interval=st.ws_ping_interval_s or None,
            ping_timeout=st.ws_ping_interval_s or None,
            server_header=None,
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 10)

    # ---- handshake -------------------------------------------------------------------------------

    def _select_subprotocol(self, connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol:
        for sub in SUBPROTOCOLS:
            if sub in offered:
                return sub
        REJECTED.labels(reason="subprotocol").inc()
        raise NegotiationError("expected subprotocol ocpp2.1, ocpp2.0.1 or ocpp1.6")

    def _reject(
        self, connection: ServerConnection, status: HTTPStatus, reason: str, text: str, retry_after_s: float = 0.0
    ) -> Response:
        REJECTED.labels(reason=reason).inc()
        resp = connection.respond(status, text + "\n")
        if status == HTTPStatus.UNAUTHORIZED:
            resp.headers["WWW-Authenticate"] = 'Basic realm="gridcharge", charset="UTF-8"'
        if retry_after_s > 0:
            resp.headers["Retry-After"] = str(math.ceil(retry_after_s))
        return resp

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        st = self.ctx.settings
        sid = station_from_path(request.path)
        if sid is None:
            return self._reject(connection, HTTPStatus.NOT_FOUND, "unknown_station", "Not Found")
        ip = str(connection.remote_address[0]) if connection.remote_address else ""
        if self.open_connections >= st.max_connections or self.per_ip[ip] >= st.max_connections_per_ip:
            return self._reject(connection, HTTPStatus.SERVICE_UNAVAILABLE, "capacity", "Too many connections")
        known = self.ctx.is_known(sid) or sid in self.credentials
        if not known and st.unknown_stations == "reject":
            return self._reject(connection, HTTPStatus.NOT_FOUND, "unknown_station", "Not Found")
        if st.security_profile in (1, 2):
            return await self._basic_auth(connection, request, sid, ip)
        elif st.security_profile == 3:
            cn = peer_common_name(connection)
            if cn != sid:
                log.info(
                    "client certificate does not match station",
                    extra={"station": safe(sid, 48), "cn": safe(cn or "", 64)},
                )
                return self._reject(connection, HTTPStatus.FORBIDDEN, "auth", "Forbidden")
        return None

    async def _basic_auth(self, connection: ServerConnection, request: Request, sid: str, ip: str) -> Response | None:
        """Basic auth with back-off and lockout per station id and per IP (`core.lockout`): while a key
        waits or is locked every attempt gets 401 unchecked, so guesses cost time whatever the client does."""
        now = time.monotonic()
        wait = max(self.station_auth.wait_s(sid, now), self.ip_auth.wait_s(ip, now))
        if wait > 0:
            locked = self.station_auth.locked(sid, now) or self.ip_auth.locked(ip, now)
            AUTH_FAILURES.labels(outcome="locked" if locked else "throttled").inc()
            return self._reject(connection, HTTPStatus.UNAUTHORIZED, "auth", "Unauthorized", wait)
        if await self._basic_ok(sid, request.headers.get("Authorization", "")):
            self.station_auth.success(sid)
            return None
        AUTH_FAILURES.labels(outcome="bad_credentials").inc()
        now = time.monotonic()
        log.info("basic auth failed", extra={"station": safe(sid, 48), "remote": ip})
        for scope, table, key in (("station", self.station_auth, sid), ("ip", self.ip_auth, ip)):
            if table.failure(key, now):
                AUTH_LOCKOUTS.labels(scope=scope).inc()
                log.warning(
                    "authentication locked out after repeated failures",
                    extra={
                        "scope": scope,
                        "station": safe(sid, 48),
                        "remote": ip,
                        "lockout_s": self.ctx.settings.auth_lockout_s,
                    },
                )
        wait = max(self.station_auth.wait_s(sid, now), self.ip_auth.wait_s(ip, now))
        return self._reject(connection, HTTPStatus.UNAUTHORIZED, "auth", "Unauthorized", wait)

    async def _basic_ok(self, sid: str, header: str) -> bool:
        if not header.startswith("Basic ") or len(header) > 1024:
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        return user == sid and await self.credentials.check(sid, password)

    # ---- connection ------------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        sid = station_from_path(ws.request.path if ws.request else "") or ""
        version = Version.from_subprotocol(ws.subprotocol)
        if version is None or not sid:
            await ws.close(1002, "subprotocol required")
            return
        ip = str(ws.remote_address[0]) if ws.remote_address else ""
        self.per_ip[ip] += 1
        self.open_connections += 1
        sess = SESSION_CLASSES[version](sid, ws, self.ctx, ip, self.ctx.settings.security_profile)
        if self.proxy is not None:
            sess.upstream = self.proxy.attach(sess)
        old = self.sessions.get(sid)
        self.sessions[sid] = sess
        protocol = version.subprotocol
        CONNECTED.labels(protocol=protocol).inc()
        try:
            if old is not None:
                # policy: a newly authenticated connection replaces the old one
                old.closed = True
                self._spawn(old.close(4000, "replaced by a newer connection"))
            sess.epoch = await self.registry.claim(sid, protocol)
            # a boot is per station: a reconnect (here or on another replica) without a reboot keeps it
            status = await self.ctx.restore_registration(sid)
            if status is not Registration.NONE:
                sess.set_registration(status)
                if status is Registration.ACCEPTED:
                    await self.dispatcher.restore_capabilities(sess)
            ev = sess.event()
            ev.connected.CopyFrom(
                station_pb2.Connected(
                    replica_id=self.ctx.settings.replica_id,
                    ownership_epoch=sess.epoch,
                    remote_addr=ip[:64],
                    security_profile=self.ctx.settings.security_profile,
                )
            )
            await self.ctx.publish_event(ev)
            await sess.start()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection failed", extra={"station": safe(sid, 48)})
        finally:
            await self._cleanup(sess, ip, protocol)

    async def _cleanup(self, sess: StationSession, ip: str, protocol: str) -> None:
        sess.fail_pending()
        self.dispatcher.drain_offline(sess)
        if self.proxy is not None:
            self.proxy.detach(sess)
        CONNECTED.labels(protocol=protocol).dec()
        self.open_connections -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
        replaced = self.sessions.get(sess.id) is not sess
        if not replaced:
            del self.sessions[sess.id]
        try:
            for ev in sess.release_held_events():
                await self.ctx.publish_event(ev)
            if sess.epoch:
                await self.ctx.touch_registration(sess)
                await self.registry.release(sess.id, sess.epoch)
            ev = sess.event()
            code = sess.close_code
            ev.disconnected.CopyFrom(
                station_pb2.Disconnected(
                    replica_id=self.ctx.settings.replica_id, reason="replaced" if replaced else f"closed {code}"
                )
            )
            await self.ctx.publish_event(ev)
        except Exception:
            log.warning("disconnect bookkeeping failed", extra={"station": safe(sess.id, 48)}, exc_info=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
