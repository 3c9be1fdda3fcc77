"""Proxy mode: one WebSocket per station to the site's upstream CSMS (`<upstream_url>/<station_id>`).

The station's OCPP version is the subprotocol; Basic auth with the station's upstream password (profiles
1, 2) or the station's own TLS client certificate (profile 3, `adapters.client_certs`); wss verifies the
upstream's certificate (system CAs or `upstream_ca_file`). The link lives while its
station is connected (and after, until its queue is delivered), reconnecting with back-off (1 s doubling to
`upstream_backoff_max_s`, jittered). On every new upstream connection the station's last BootNotification
is sent again (a CSMS may refuse anything before a boot on a connection), then the queued transaction
messages in order.

Station → CSMS (`forward`): relayed, the upstream's answer goes back to the station; while the upstream is
down the station is answered locally and its transaction messages are queued. CSMS → station
(`_on_upstream_call`): checked (schema, profile policy), sent to the station over the gateway's own CALL
path, the station's answer (result or error) returned with the upstream's message id. The rules are in
`core.proxy`. A hostile upstream is bounded: frames ≤ `max_message_bytes`, a rate limit, at most a few
CALLs waiting (others answered with a CALLERROR), answers to unknown ids ignored, bogus answers replaced by
the local answer; it only ever reaches its own station.

The offline queue and the 1.6 transaction-id map are durable: written through to the shared store
(`gw:upstream-queue:<station>` hash seq → entry, seq from the counter `gw:upstream-queue-seq:<station>`;
`gw:upstream-txids:<station>` hash local id → upstream id) before the station is answered, removed after the
upstream's answer, and loaded by the link of whichever replica holds the station next (after a restart, or
when the station reconnects to another replica). A link whose station went elsewhere stops delivering.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gridcharge.gateway.adapters.client_certs import ClientCertError, ClientCerts
from gridcharge.gateway.adapters.metrics import (
    UPSTREAM_CONNECT_FAILURES,
    UPSTREAM_CONNECTED,
    UPSTREAM_MESSAGES,
    UPSTREAM_QUEUED,
)
from gridcharge.gateway.core import frames, schemas
from gridcharge.gateway.core.errors import Err, Version, cap, safe
from gridcharge.gateway.core.frames import BadFrame, CallFrame, ErrorFrame, ResultFrame
from gridcharge.gateway.core.proxy import (
    OfflineQueue,
    ProfilePolicy,
    ProfileRecord,
    Queued,
    TxIdMap,
    decode_queued,
    encode_queued,
    is_transaction_message,
    ref_of,
    refused_answer,
)
from gridcharge.gateway.core.ratelimit import TokenBucket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

if TYPE_CHECKING:
    from gridcharge.gateway.adapters.context import GatewayContext
    from gridcharge.gateway.handlers.base import StationSession

log = logging.getLogger(__name__)

BOOT_TTL_S = 30 * 86400.0  # a station's last boot is kept this long for replays from another replica
MAX_WAITING_CALLS = 4  # upstream CALLs waiting for the station; more are answered "busy"
UPSTREAM_RATE_PER_S, UPSTREAM_BURST = 20.0, 100


@dataclass(frozen=True, slots=True)
class Relay:
    """The fate of one station message: the upstream's `answer` (None = answer locally), and for a 1.6
    StartTransaction queued while the upstream is down the `local_tx_id` the station gets."""

    answer: dict[str, Any] | None
    local_tx_id: int | None = None


def connect_failure(exc: BaseException) -> str:
    """The `reason` label of a failed upstream connection attempt."""
    if isinstance(exc, ClientCertError):
        return "certificate"  # our own client certificate is missing or unusable: never presented
    if isinstance(exc, InvalidStatus):
        return "refused"  # the upstream answered the handshake with an HTTP status (401, 403, 404 ...)
    cause: BaseException | None = exc
    for _ in range(4):  # the TLS error may be the cause of the handshake's error
        if isinstance(cause, ssl.SSLError):
            return "tls"  # TLS handshake failed (certificate not trusted, either way round)
        cause = cause.__cause__ or cause.__context__ if cause is not None else None
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, InvalidHandshake):
        # no usable HTTP answer; with TLS 1.3 also a client certificate the upstream refused (its alert
        # arrives after the client's side of the handshake and reads as a closed connection)
        return "handshake"
    if isinstance(exc, OSError):
        return "unreachable"
    return "other"


def client_tls(ca_file: Any | None) -> ssl.SSLContext:
    """Upstream TLS: certificate and host name verified (system CAs, or the given bundle), TLS 1.2+."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Proxy:
    """The upstream links of this replica's stations."""

    def __init__(self, ctx: GatewayContext, passwords: dict[str, str], client_certs: ClientCerts | None = None) -> None:
        st = ctx.settings
        self.ctx, self.settings, self.passwords, self.client_certs = ctx, st, passwords, client_certs
        self.policy = ProfilePolicy(
            frozenset(st.upstream_reserved_stack_levels),
            range(st.upstream_reserved_profile_id_min, st.upstream_reserved_profile_id_max + 1),
        )
        self.ssl = client_tls(st.upstream_ca_file) if st.upstream_url.startswith("wss:") else None
        self.links: dict[str, UpstreamLink] = {}

    def ssl_for(self, station_id: str) -> ssl.SSLContext | None:
        """The TLS context of one station's upstream connection (profile 3: with its client certificate;
        ClientCertError when that cannot be used now)."""
        if self.client_certs is not None:
            return self.client_certs.context(station_id)
        return self.ssl

    def attach(self, sess: StationSession) -> UpstreamLink:
        """The station's link. A link still delivering the queue of the station's previous connection is
        replaced by a fresh one that reads the queue from the store (the station may have queued more on
        another replica meanwhile); what the old one could not persist is carried over."""
        link = self.links.get(sess.id)
        if link is None or link.version is not sess.version or link.stopped or link.session is None:
            carried: list[Queued] = []
            if link is not None:
                carried = [q for q in link.queue.items if q.seq is None] if link.version is sess.version else []
                link.stop()
            old = link
            link = UpstreamLink(self, sess.id, sess.version, carried)
            if old is not None and old.version is sess.version:
                link.last_boot, link.profiles = old.last_boot, old.profiles
                link.tx_ids.to_upstream_ids.update(old.tx_ids.to_upstream_ids)
            self.links[sess.id] = link
            link.start()
        link.session = sess
        link.draining = False
        return link

    def detach(self, sess: StationSession) -> None:
        """The station is gone: its link stays until its queue is delivered, then closes."""
        link = self.links.get(sess.id)
        if link is None or link.session is not sess:
            return
        link.session = None
        if not link.queue:
            link.stop()
            del self.links[sess.id]
        else:
            link.draining = True

    async def stop(self) -> None:
        for link in list(self.links.values()):
            link.stop()
        self.links.clear()


class UpstreamLink:
    def __init__(self, proxy: Proxy, station_id: str, version: Version, carried: list[Queued] | None = None) -> None:
        self.proxy, self.id, self.version = proxy, station_id, version
        st = proxy.settings
        self.url = st.upstream_url.rstrip("/") + "/" + station_id
        self.session: StationSession | None = None
        self.draining = False
        self.stopped = False
        self.connected = asyncio.Event()  # open and resynchronised (boot replayed, queue delivered)
        self.attempted = asyncio.Event()  # the first connection attempt has ended
        self.loaded = asyncio.Event()  # the durable queue and id map have been read from the store
        self._carried = carried or []
        self.queue = OfflineQueue(st.upstream_queue_max)
        self.tx_ids = TxIdMap()
        self.profiles = ProfileRecord()
        self.last_boot: dict[str, Any] | None = None
        self._ws: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[ResultFrame | ErrorFrame]] = {}
        self._call_lock = asyncio.Lock()  # one CALL in flight to the upstream (OCPP-J)
        self._calls: asyncio.Queue[CallFrame] = asyncio.Queue(MAX_WAITING_CALLS)
        self._bucket = TokenBucket(UPSTREAM_RATE_PER_S, UPSTREAM_BURST, time.monotonic())
        self._ids = 0
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[None]] = set()

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gw-upstream-link")

    def stop(self) -> None:
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
        UPSTREAM_QUEUED.dec(len(self.queue))
        self.queue.items.clear()

    def _headers(self) -> dict[str, str]:
        st = self.proxy.settings
        if st.upstream_security_profile in (0, 3):
            return {}  # 3: the client certificate is the station's identity, no password (2.0.1 A00)
        password = self.proxy.passwords.get(self.id, "")
        token = base64.b64encode(f"{self.id}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _run(self) -> None:
        st = self.proxy.settings
        await self._load()
        backoff = 1.0
        while not self.stopped:
            if await self._moved():
                return
            try:
                tls = self.proxy.ssl_for(self.id)
                ws = await connect(
                    self.url,
                    subprotocols=[Subprotocol(self.version.subprotocol)],
                    additional_headers=self._headers(),
                    ssl=tls,
                    open_timeout=st.upstream_connect_timeout_s,
                    max_size=st.max_message_bytes,
                    max_queue=4,
                    compression=None,
                    user_agent_header=None,
                    ping_interval=st.ws_ping_interval_s or None,
                    ping_timeout=st.ws_ping_interval_s or None,
                )
                if ws.subprotocol != self.version.subprotocol:
                    await ws.close(1002, "subprotocol required")
                    raise ConnectionError("upstream did not accept the subprotocol")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = connect_failure(exc)
                UPSTREAM_CONNECT_FAILURES.labels(reason=reason).inc()
                # never the URL's secrets or headers: the exception type and a capped text only (a client
                # certificate problem names the file and the problem, never key material)
                log.log(
                    logging.WARNING if reason in ("certificate", "refused", "tls") else logging.INFO,
                    "upstream CSMS unreachable",
                    extra={
                        "station": safe(self.id, 48),
                        "reason": reason,
                        "error": cap(f"{type(exc).__name__}: {exc}", 200),
                    },
                )
                self.attempted.set()
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(2 * backoff, st.upstream_backoff_max_s)
                continue
            backoff = 1.0
            self._ws = ws
            UPSTREAM_CONNECTED.inc()
            reader = asyncio.create_task(self._read(ws))
            worker = asyncio.create_task(self._serve_calls())
            try:
                await self._resync()
                self.connected.set()
                self.attempted.set()
                log.info("upstream CSMS connected", extra={"station": safe(self.id, 48)})
                await reader
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info(
                    "upstream CSMS link lost",
                    extra={"station": safe(self.id, 48), "error": cap(type(exc).__name__, 60)},
                )
            finally:
                self.connected.clear()
                self._ws = None
                UPSTREAM_CONNECTED.dec()
                for t in (reader, worker):
                    t.cancel()
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("upstream disconnected"))
                self._pending.clear()
                with contextlib.suppress(Exception):
                    await ws.close()
            if self.draining and not self.queue:
                break
            await asyncio.sleep(0.5 * random.random())

    async def _resync(self) -> None:
        """A new upstream connection: replay the station's boot, then deliver the queue in order."""
        if await self._moved():
            return
        if self.last_boot is not None:
            await self._call("BootNotification", self.last_boot)
        while self.queue:
            item = self.queue.items[0]
            answer = await self._call(item.action, self.tx_ids.for_upstream(item.action, item.payload))
            if (
                not isinstance(answer, ErrorFrame)
                and item.local_tx_id is not None
                and isinstance(answer.payload.get("transactionId"), int)
            ):
                # the id map first: a Stop still queued (here or, after a crash, on another replica) needs it
                await self._map_tx(item.local_tx_id, answer.payload["transactionId"])
            with contextlib.suppress(ValueError):  # unless the bound evicted it meanwhile
                self.queue.items.remove(item)
                UPSTREAM_QUEUED.dec()
            await self._unstore(item)
            if isinstance(answer, ErrorFrame):
                UPSTREAM_MESSAGES.labels(direction="up", outcome="error").inc()
                log.warning(
                    "upstream refused a queued transaction message",
                    extra={"station": safe(self.id, 48), "action": item.action, "code": cap(answer.code, 40)},
                )
                continue
            UPSTREAM_MESSAGES.labels(direction="up", outcome="delivered").inc()
        if self.draining:
            self._retire()

    def _retire(self) -> None:
        self.stop()
        if self.proxy.links.get(self.id) is self:
            del self.proxy.links[self.id]

    async def _moved(self) -> bool:
        """A link left to deliver the queue of a station that has since connected to another replica retires:
        that replica's link read the same queue from the store and delivers it (delivering here too would
        duplicate, and a second upstream connection for the station could displace that replica's)."""
        if self.session is not None or not await self._held_elsewhere():
            return False
        log.info("station moved to another replica; its queue is delivered there", extra={"station": safe(self.id, 48)})
        self._retire()
        return True

    async def _held_elsewhere(self) -> bool:
        registry = self.proxy.ctx.registry
        if registry is None:
            return False
        try:
            owner = await asyncio.wait_for(registry.owner(self.id), self.proxy.settings.cluster_timeout_s)
        except Exception:
            return False  # unknown: deliver (at least once beats never)
        return owner is not None and owner.replica_id != self.proxy.settings.replica_id

    # ---- the durable queue and id map (shared store) -------------------------------------------------

    def _key(self, what: str) -> str:
        return f"gw:upstream-{what}:{self.id}"

    async def _bounded(self, coro: Any) -> Any:
        return await asyncio.wait_for(coro, self.proxy.settings.cluster_timeout_s)

    async def _load(self) -> None:
        """Read what an earlier connection of the station (this replica before a restart, or another one)
        left in the store: the queue, in its order, and the 1.6 id map."""
        store = self.proxy.ctx.store
        limit = self.proxy.settings.max_message_bytes + 1024
        try:
            raw = await self._bounded(store.hgetall(self._key("queue")))
            ids = await self._bounded(store.hgetall(self._key("txids")))
            boot = await self._bounded(store.get(self._key("boot"))) if self.last_boot is None else None
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("upstream queue not readable from the store", extra={"station": safe(self.id, 48)})
            raw, ids, boot = {}, {}, None
        if boot is not None and self.last_boot is None and len(boot) <= limit:  # the station's own boot wins
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                last = json.loads(boot)
                if isinstance(last, dict) and schemas.validate(self.version, "BootNotification", "req", last) is None:
                    self.last_boot = last
        stored: list[Queued] = []
        other_version = 0
        for field_, value in raw.items():
            item = decode_queued(int(field_), value, limit) if field_.isdigit() else None
            if item is None:
                UPSTREAM_MESSAGES.labels(direction="up", outcome="unreadable").inc()
                with contextlib.suppress(Exception):
                    await self._bounded(store.hdel(self._key("queue"), field_))
                continue
            if not is_transaction_message(self.version, item.action, item.payload):
                other_version += 1  # queued while the station spoke the other OCPP version: kept for it
                continue
            stored.append(item)
        if other_version:
            log.warning(
                "upstream queue holds messages of another OCPP version; left in the store",
                extra={"station": safe(self.id, 48), "messages": other_version},
            )
        mine = {q.seq for q in self.queue.items}
        before = len(self.queue)
        gone = self.queue.restore(q for q in stored if q.seq not in mine)
        for item in self._carried:
            res = self.queue.push(item)
            gone += [q for q in (res.evicted, None if res.queued else item) if q is not None]
        self._carried = []
        for item in gone:
            UPSTREAM_MESSAGES.labels(direction="up", outcome="dropped").inc()
            await self._unstore(item)
        UPSTREAM_QUEUED.inc(len(self.queue) - before)
        pairs = sorted(
            (int(k), int(v)) for k, v in ids.items() if k.isdigit() and v.isdigit() and len(k) <= 12 and len(v) <= 12
        )
        for local_id, upstream_id in pairs[-self.tx_ids.max_entries :]:
            self.tx_ids.add(local_id, upstream_id)
        if stored:
            log.info(
                "upstream queue restored from the store",
                extra={"station": safe(self.id, 48), "messages": len(self.queue)},
            )
        self.loaded.set()

    async def _store_boot(self, payload: dict[str, Any]) -> None:
        """The station's last boot, replayed first on every upstream connection, also by a link on another
        replica that delivers this station's queue before the station has booted there."""
        with contextlib.suppress(Exception):
            raw = json.dumps(payload, separators=(",", ":")).encode()
            await self._bounded(self.proxy.ctx.store.set(self._key("boot"), raw, BOOT_TTL_S))

    async def _store_item(self, item: Queued) -> None:
        """Append to the store's queue (before the station is answered); on a store failure the entry stays
        in memory only (counted: a restart would lose it)."""
        store = self.proxy.ctx.store
        try:
            seq = await self._bounded(store.incr(self._key("queue-seq")))
            await self._bounded(store.hset(self._key("queue"), str(seq), encode_queued(item)))
            item.seq = seq
        except asyncio.CancelledError:
            raise
        except Exception:
            UPSTREAM_MESSAGES.labels(direction="up", outcome="not_persisted").inc()
            log.warning("upstream queue: store write failed, kept in memory", extra={"station": safe(self.id, 48)})

    async def _unstore(self, item: Queued | None) -> None:
        if item is None or item.seq is None:
            return
        try:
            await self._bounded(self.proxy.ctx.store.hdel(self._key("queue"), str(item.seq)))
        except asyncio.CancelledError:
            raise
        except Exception:
            # left in the store: delivered again by a later link (at least once)
            log.warning("upstream queue: store delete failed", extra={"station": safe(self.id, 48)})

    async def _map_tx(self, local_id: int, upstream_id: int) -> None:
        evicted = self.tx_ids.add(local_id, upstream_id)
        store = self.proxy.ctx.store
        with contextlib.suppress(Exception):
            await self._bounded(store.hset(self._key("txids"), str(local_id), str(upstream_id).encode()))
            if evicted is not None:
                await self._bounded(store.hdel(self._key("txids"), str(evicted)))

    # ---- frames ------------------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            if not self._bucket.allow(time.monotonic()):
                UPSTREAM_MESSAGES.labels(direction="down", outcome="rate_limited").inc()
                continue
            frame = frames.parse_frame(raw)
            if type(frame) is CallFrame:
                try:
                    self._calls.put_nowait(frame)
                except asyncio.QueueFull:
                    UPSTREAM_MESSAGES.labels(direction="down", outcome="busy").inc()
                    await self._send(
                        frames.call_error(frame.unique_id, Err.GENERIC, "busy: too many calls waiting", self.version)
                    )
            elif type(frame) is ResultFrame or type(frame) is ErrorFrame:
                fut = self._pending.pop(frame.unique_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(frame)
                else:
                    UPSTREAM_MESSAGES.labels(direction="down", outcome="unknown_id").inc()
            else:
                assert isinstance(frame, BadFrame)
                UPSTREAM_MESSAGES.labels(direction="down", outcome="bad_frame").inc()
                if frame.respond:
                    await self._send(frames.call_error(frame.unique_id, frame.kind, frame.description, self.version))

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.send(text)

    async def _call(self, action: str, payload: dict[str, Any]) -> ResultFrame | ErrorFrame:
        """A CALL to the upstream; TimeoutError / ConnectionError when it does not answer."""
        async with self._call_lock:
            ws = self._ws
            if ws is None:
                raise ConnectionError("upstream not connected")
            self._ids += 1
            uid = f"gc{self._ids}"
            fut: asyncio.Future[ResultFrame | ErrorFrame] = asyncio.get_running_loop().create_future()
            self._pending[uid] = fut
            try:
                await ws.send(frames.call(uid, action, payload))
                return await asyncio.wait_for(fut, self.proxy.settings.upstream_call_timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise ConnectionError("upstream disconnected") from exc
            finally:
                self._pending.pop(uid, None)

    # ---- station → upstream --------------------------------------------------------------------------

    async def forward(self, action: str, payload: dict[str, Any]) -> Relay:
        """Relay one station message (already validated) and return the upstream's answer, or None when the
        station is to be answered locally (upstream down, slow, erroring or answering nonsense)."""
        if action == "BootNotification":
            self.last_boot = payload
            await self._store_boot(payload)
        tx = is_transaction_message(self.version, action, payload)
        if not self.loaded.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.loaded.wait(), self.proxy.settings.cluster_timeout_s)
        if not self.attempted.is_set():
            # the station's first message usually arrives while the link is still connecting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.attempted.wait(), self.proxy.settings.upstream_connect_timeout_s)
        if tx and (not self.connected.is_set() or self.queue):
            return await self._enqueue(action, payload)
        if not self.connected.is_set():
            UPSTREAM_MESSAGES.labels(direction="up", outcome="local").inc()
            return Relay(None)
        try:
            answer = await self._call(action, self.tx_ids.for_upstream(action, payload))
        except (TimeoutError, ConnectionError):
            if tx:
                # no answer in time: the link is treated as broken (delivery is at least once, like a
                # station's own offline queue) and the message goes first into the queue
                ws = self._ws
                if ws is not None:
                    closing = asyncio.ensure_future(ws.close(1011, "no answer"))
                    self._closing.add(closing)
                    closing.add_done_callback(self._closing.discard)
                return await self._enqueue(action, payload)
            UPSTREAM_MESSAGES.labels(direction="up", outcome="timeout").inc()
            return Relay(None)
        if isinstance(answer, ErrorFrame):
            UPSTREAM_MESSAGES.labels(direction="up", outcome="error").inc()
            return Relay(None)
        bad = schemas.validate(self.version, action, "conf", answer.payload)
        if bad is not None:
            UPSTREAM_MESSAGES.labels(direction="up", outcome="bogus").inc()
            log.warning(
                "upstream answer failed the schema; answered locally",
                extra={"station": safe(self.id, 48), "action": action, "error": cap(bad.description, 200)},
            )
            return Relay(None)
        UPSTREAM_MESSAGES.labels(direction="up", outcome="relayed").inc()
        return Relay(answer.payload)

    async def _enqueue(self, action: str, payload: dict[str, Any]) -> Relay:
        """Queue a transaction message, in memory and in the store, before the station is answered."""
        local_tx = None
        if self.version is Version.V16 and action == "StartTransaction":
            local_tx = await self.proxy.ctx.next_transaction_id()
        item = Queued(action, payload, local_tx)
        await self._store_item(item)  # first: only a stored entry is in the queue the link delivers from
        before = len(self.queue)
        res = self.queue.push(item)
        UPSTREAM_QUEUED.inc(len(self.queue) - before)
        if res.evicted is not None or not res.queued:
            # at the bound: the oldest meter update gave way, or (nothing droppable) the new message did
            UPSTREAM_MESSAGES.labels(direction="up", outcome="dropped").inc()
            await self._unstore(res.evicted if res.queued else item)
        if res.queued:
            UPSTREAM_MESSAGES.labels(direction="up", outcome="queued").inc()
        return Relay(None, local_tx)

    # ---- upstream → station --------------------------------------------------------------------------

    async def _serve_calls(self) -> None:
        while True:
            call = await self._calls.get()
            try:
                await self._on_upstream_call(call)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("upstream call failed", extra={"station": safe(self.id, 48)})
                await self._send(frames.call_error(call.unique_id, Err.INTERNAL, "internal error", self.version))

    async def _on_upstream_call(self, call: CallFrame) -> None:
        action, uid = call.action, call.unique_id
        if action not in schemas.known_actions(self.version):
            UPSTREAM_MESSAGES.labels(direction="down", outcome="error").inc()
            await self._send(
                frames.call_error(uid, Err.NOT_IMPLEMENTED, f"{cap(action, 64)} is not implemented", self.version)
            )
            return
        violation = schemas.validate(self.version, action, "req", call.payload)
        if violation is not None:
            UPSTREAM_MESSAGES.labels(direction="down", outcome="error").inc()
            await self._send(frames.call_error(uid, violation.kind, violation.description, self.version))
            return
        sess = self.session
        if sess is None or sess.closed:
            UPSTREAM_MESSAGES.labels(direction="down", outcome="offline").inc()
            await self._send(frames.call_error(uid, Err.GENERIC, "station not connected", self.version))
            return
        payload = call.payload
        if action == "SetChargingProfile":
            why = self.proxy.policy.refusal(self.version, payload)
            if why is not None:
                await self._refuse(uid, action, why)
                return
        if action == "ClearChargingProfile":
            plan = self.proxy.policy.plan_clear(self.version, payload, self.profiles.profiles.values())
            if plan.refuse:
                await self._refuse(uid, action, plan.refuse)
                return
            if not plan.relay:
                await self._clear_ids(sess, uid, plan.ids)
                return
        answer = await self._to_station(sess, action, self.tx_ids.for_station(action, payload))
        if answer is None:
            return
        if isinstance(answer, ResultFrame) and answer.payload.get("status") == "Accepted":
            await self._record(action, payload)
        UPSTREAM_MESSAGES.labels(direction="down", outcome="relayed").inc()
        await self._send(self._reply(uid, answer))

    async def _to_station(
        self, sess: StationSession, action: str, payload: dict[str, Any]
    ) -> ResultFrame | ErrorFrame | None:
        try:
            return await sess.send_call(action, payload, self.proxy.settings.call_timeout_s)
        except TimeoutError:
            UPSTREAM_MESSAGES.labels(direction="down", outcome="timeout").inc()
            return None  # the upstream sees what a silent station gives it: no answer
        except ConnectionError:
            return ErrorFrame("", Err.GENERIC.code(self.version), "station disconnected")

    @staticmethod
    def _reply(uid: str, answer: ResultFrame | ErrorFrame) -> str:
        if isinstance(answer, ResultFrame):
            return frames.call_result(uid, answer.payload)
        return json.dumps([4, uid, answer.code, answer.description, answer.details], separators=(",", ":"))

    async def _refuse(self, uid: str, action: str, why: str) -> None:
        UPSTREAM_MESSAGES.labels(direction="down", outcome="refused").inc()
        log.info(
            "upstream profile command refused", extra={"station": safe(self.id, 48), "action": action, "reason": why}
        )
        await self._send(frames.call_result(uid, refused_answer(self.version, action, why)))

    async def _clear_ids(self, sess: StationSession, uid: str, ids: tuple[int, ...]) -> None:
        """A Clear by criteria narrowed to the upstream's own profiles: one Clear by id each."""
        UPSTREAM_MESSAGES.labels(direction="down", outcome="adjusted").inc()
        cleared = []
        for pid in ids:
            req = {"id": pid} if self.version is Version.V16 else {"chargingProfileId": pid}
            ans = await self._to_station(sess, "ClearChargingProfile", req)
            if isinstance(ans, ResultFrame) and ans.payload.get("status") == "Accepted":
                cleared.append(pid)
        self.profiles.cleared(ids)
        await self._forget(ids)
        await self._send(frames.call_result(uid, {"status": "Accepted" if cleared else "Unknown"}))

    async def _record(self, action: str, payload: dict[str, Any]) -> None:
        """Keep what the upstream installed (in memory and in the store `gw:upstream-profiles:<station>`,
        for operators and for narrowing later Clears)."""
        if action == "SetChargingProfile":
            ref = ref_of(self.version, payload)
            self.profiles.installed(ref)
            with contextlib.suppress(Exception):
                await self.proxy.ctx.store.hset(
                    f"gw:upstream-profiles:{self.id}",
                    str(ref.profile_id),
                    json.dumps(payload, separators=(",", ":")).encode(),
                )
        elif action == "ClearChargingProfile":
            pid = payload.get("id") if self.version is Version.V16 else payload.get("chargingProfileId")
            if pid is not None:
                self.profiles.cleared([int(pid)])
                await self._forget([int(pid)])

    async def _forget(self, ids: Any) -> None:
        for pid in ids:
            with contextlib.suppress(Exception):
                await self.proxy.ctx.store.hdel(f"gw:upstream-profiles:{self.id}", str(pid))
