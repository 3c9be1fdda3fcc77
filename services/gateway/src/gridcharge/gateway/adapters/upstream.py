"""Proxy mode: one WebSocket per station to the site's upstream CSMS (`<upstream_url>/<station_id>`).

The station's OCPP version is the subprotocol; Basic auth with the station's upstream password (profiles
1, 2); wss verifies the upstream's certificate (system CAs or `upstream_ca_file`). The link lives while its
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

from gridcharge.gateway.adapters.metrics import UPSTREAM_CONNECTED, UPSTREAM_MESSAGES, UPSTREAM_QUEUED
from gridcharge.gateway.core import frames, schemas
from gridcharge.gateway.core.errors import Err, Version, cap, safe
from gridcharge.gateway.core.frames import BadFrame, CallFrame, ErrorFrame, ResultFrame
from gridcharge.gateway.core.proxy import (
    OfflineQueue,
    ProfilePolicy,
    ProfileRecord,
    Queued,
    TxIdMap,
    is_transaction_message,
    ref_of,
    refused_answer,
)
from gridcharge.gateway.core.ratelimit import TokenBucket
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

if TYPE_CHECKING:
    from gridcharge.gateway.adapters.context import GatewayContext
    from gridcharge.gateway.handlers.base import StationSession

log = logging.getLogger(__name__)

MAX_WAITING_CALLS = 4  # upstream CALLs waiting for the station; more are answered "busy"
UPSTREAM_RATE_PER_S, UPSTREAM_BURST = 20.0, 100


@dataclass(frozen=True, slots=True)
class Relay:
    """The fate of one station message: the upstream's `answer` (None = answer locally), and for a 1.6
    StartTransaction queued while the upstream is down the `local_tx_id` the station gets."""

    answer: dict[str, Any] | None
    local_tx_id: int | None = None


def client_tls(ca_file: Any | None) -> ssl.SSLContext:
    """Upstream TLS: certificate and host name verified (system CAs, or the given bundle), TLS 1.2+."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Proxy:
    """The upstream links of this replica's stations."""

    def __init__(self, ctx: GatewayContext, passwords: dict[str, str]) -> None:
        st = ctx.settings
        self.ctx, self.settings, self.passwords = ctx, st, passwords
        self.policy = ProfilePolicy(
            frozenset(st.upstream_reserved_stack_levels),
            range(st.upstream_reserved_profile_id_min, st.upstream_reserved_profile_id_max + 1),
        )
        self.ssl = client_tls(st.upstream_ca_file) if st.upstream_url.startswith("wss:") else None
        self.links: dict[str, UpstreamLink] = {}

    def attach(self, sess: StationSession) -> UpstreamLink:
        """The station's link (a reconnecting station gets its old one, with its queue)."""
        link = self.links.get(sess.id)
        if link is None or link.version is not sess.version or link.stopped:
            if link is not None:
                link.stop()
            link = UpstreamLink(self, sess.id, sess.version)
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
    def __init__(self, proxy: Proxy, station_id: str, version: Version) -> None:
        self.proxy, self.id, self.version = proxy, station_id, version
        st = proxy.settings
        self.url = st.upstream_url.rstrip("/") + "/" + station_id
        self.session: StationSession | None = None
        self.draining = False
        self.stopped = False
        self.connected = asyncio.Event()  # open and resynchronised (boot replayed, queue delivered)
        self.attempted = asyncio.Event()  # the first connection attempt has ended
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
        if st.upstream_security_profile == 0:
            return {}
        password = self.proxy.passwords.get(self.id, "")
        token = base64.b64encode(f"{self.id}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _run(self) -> None:
        st = self.proxy.settings
        backoff = 1.0
        while not self.stopped:
            try:
                ws = await connect(
                    self.url,
                    subprotocols=[Subprotocol(self.version.subprotocol)],
                    additional_headers=self._headers(),
                    ssl=self.proxy.ssl,
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
                # never the URL's secrets or headers: the exception type and a capped text only
                log.info(
                    "upstream CSMS unreachable",
                    extra={"station": safe(self.id, 48), "error": cap(f"{type(exc).__name__}: {exc}", 200)},
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
        if self.last_boot is not None:
            await self._call("BootNotification", self.last_boot)
        while self.queue:
            item = self.queue.items[0]
            answer = await self._call(item.action, self.tx_ids.for_upstream(item.action, item.payload))
            self.queue.items.popleft()
            UPSTREAM_QUEUED.dec()
            if isinstance(answer, ErrorFrame):
                UPSTREAM_MESSAGES.labels(direction="up", outcome="error").inc()
                log.warning(
                    "upstream refused a queued transaction message",
                    extra={"station": safe(self.id, 48), "action": item.action, "code": cap(answer.code, 40)},
                )
                continue
            UPSTREAM_MESSAGES.labels(direction="up", outcome="delivered").inc()
            if item.local_tx_id is not None and isinstance(answer.payload.get("transactionId"), int):
                self.tx_ids.add(item.local_tx_id, answer.payload["transactionId"])
        if self.draining:
            self.stop()
            if self.proxy.links.get(self.id) is self:
                del self.proxy.links[self.id]

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
        tx = is_transaction_message(self.version, action, payload)
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
        local_tx = None
        if self.version is Version.V16 and action == "StartTransaction":
            local_tx = await self.proxy.ctx.next_transaction_id()
        before = len(self.queue)
        if self.queue.push(Queued(action, payload, local_tx)):
            UPSTREAM_MESSAGES.labels(direction="up", outcome="queued").inc()
        if len(self.queue) <= before:
            UPSTREAM_MESSAGES.labels(direction="up", outcome="dropped").inc()
        UPSTREAM_QUEUED.inc(len(self.queue) - before)
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
