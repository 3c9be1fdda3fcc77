"""One station connection: the `ocpp` ChargePoint with the gaps of the library closed in a thin layer.

What this layer adds (the library drops unparseable frames, swaps NotImplemented/NotSupported, validates
in a thread pool and does no boot gating):
- every frame is parsed by `core.frames`; unreadable CALLs get a CALLERROR (id "-1" where unreadable);
- any CALL other than BootNotification before an Accepted boot → SecurityError, checked first (2.0.1
  B02.FR.09 / B03.FR.07; `core.boot`); the boot is per station (registry), not per connection;
- unknown action → NotImplemented, known but unhandled → NotSupported (OCPP-J wording);
- schema violations → the version's error code, description ≤ 255 chars without station data;
- token-bucket rate limits per station id and per source IP that outlive the connection (`core.ratelimit`);
- outgoing CALLs are matched to answers by message id (one in flight, enforced by the command queue).

Handlers (`@on(Action)` in v16.py / v201.py) receive the validated payload as on the wire (camelCase
dict, no snake-case conversion: cheaper, and `core.mapping` works on spec field names) and return the
CALLRESULT payload. They only translate to bus events.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from gridcharge.gateway.adapters.metrics import AUTHORIZATIONS, MESSAGES, RATE_LIMITED
from gridcharge.gateway.core import frames, schemas
from gridcharge.gateway.core.authorization import STATUSES_16, AuthRequest, Decision
from gridcharge.gateway.core.boot import Registration, station_call_allowed
from gridcharge.gateway.core.errors import Err, Version, cap, safe
from gridcharge.gateway.core.frames import BadFrame, CallFrame, ErrorFrame, ResultFrame
from gridcharge.gateway.core.mapping import new_event, notification
from gridcharge.gateway.core.profiles import Capabilities
from gridcharge.gateway.core.proxy import station_answer
from gridcharge.gateway.core.ratelimit import allow_all
from gridcharge.gateway.core.transactions import TransactionSequencer
from gridcharge.shared.codec import iso_utc
from ocpp.charge_point import ChargePoint

if TYPE_CHECKING:
    from gridcharge.gateway.adapters.context import GatewayContext
    from gridcharge.gateway.adapters.upstream import Relay, UpstreamLink
    from gridcharge.station.v1 import station_pb2

log = logging.getLogger(__name__)

Handler = Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]
_ids = itertools.count(1)


class StationSession(ChargePoint):
    """A station's socket. Subclasses set `version` and define `@on(Action)` handlers."""

    version: ClassVar[Version]
    _routes: ClassVar[dict[str, Handler]]

    def __init__(
        self, station_id: str, connection: Any, ctx: GatewayContext, remote_addr: str = "", security_profile: int = 0
    ) -> None:
        # ChargePoint.__init__ is not called on purpose: it builds a route map, a lock and a queue per
        # connection; the route map is per class here and answers are matched by id (`_pending`).
        self.id = station_id
        self._connection = connection
        self._ocpp_version = self.version.value
        self.logger = log
        self.ctx = ctx
        self.remote_addr = remote_addr
        self.security_profile = security_profile
        self.boot_status = Registration.NONE  # the station's registration (restored from the registry)
        self.registered = asyncio.Event()  # set once boot_status is known (restored or booted)
        self.triggered: set[str] = set()  # messages we asked for with TriggerMessage (allowed while Pending)
        self.asked_for_boot = False  # a TriggerMessage(BootNotification) was queued on this connection
        self.epoch = 0  # ownership epoch from the registry
        self.capabilities = Capabilities()
        # GetChargingProfiles request id -> (ReportChargingProfiles received, set when the last one came)
        self.profile_reports: dict[Any, tuple[list[dict[str, Any]], asyncio.Future[None]]] = {}
        self.closed = False
        self.over_limit = 0  # frames dropped in a row by the rate limit
        self._closing: asyncio.Future[None] | None = None
        self._pending: dict[str, asyncio.Future[ResultFrame | ErrorFrame]] = {}
        self._call_lock = asyncio.Lock()  # one CALL in flight (OCPP-J), also for calls outside the queue
        self.touched_at = ctx.clock.time()  # last refresh of the boot status in the registry
        self._tasks: set[asyncio.Future[Any]] = set()
        self.queue: deque[Any] = deque()  # command jobs, run one at a time (adapters.dispatcher)
        self.worker: asyncio.Task[None] | None = None
        self._sequencer: TransactionSequencer[station_pb2.StationEvent] | None = None
        self.upstream: UpstreamLink | None = None  # proxy mode: the station's link to the upstream CSMS
        self.relay: Relay | None = None  # the upstream's fate of the CALL being handled

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        routes: dict[str, Handler] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                action = getattr(attr, "_on_action", None)
                if action is not None:
                    routes[str(action)] = attr
        cls._routes = routes

    @property
    def sequencer(self) -> TransactionSequencer[station_pb2.StationEvent]:
        if self._sequencer is None:
            self._sequencer = TransactionSequencer()
        return self._sequencer

    # ---- inbound ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Receive loop; returns when the socket closes."""
        async for raw in self._connection:
            await self.route_message(raw)

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Handle one frame; never raises (a bug in a handler becomes an InternalError CALLERROR)."""
        if self.closed:
            return
        frame = frames.parse_frame(raw_msg)
        allowed = self._within_rate()  # every frame counts, against the station's and the IP's bucket
        if allowed:
            self.over_limit = 0
        else:
            self.over_limit += 1
            if self.over_limit > 5 * self.ctx.settings.rate_burst:
                # a station that keeps flooding is cut off (1008 policy violation); it may reconnect
                log.warning("rate limit: closing flooding connection", extra={"station": safe(self.id, 48)})
                self.closed = True
                # not awaited here: the receive loop must keep draining frames for the close handshake
                self._closing = asyncio.ensure_future(self._connection.close(1008, "rate limit exceeded"))
                return
        if type(frame) is CallFrame:
            if not allowed:
                MESSAGES.labels(action=self._action_label(frame.action), direction="in", outcome="error").inc()
                await self._send_error(frame.unique_id, Err.GENERIC, "rate limit exceeded")
                return
            await self._handle(frame)
        elif type(frame) is ResultFrame or type(frame) is ErrorFrame:
            fut = self._pending.pop(frame.unique_id, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)  # answers to our own CALLs are bounded by those CALLs
            else:
                MESSAGES.labels(action="unknown", direction="in", outcome="error").inc()
                if allowed:
                    log.debug(
                        "answer to no pending CALL",
                        extra={"station": safe(self.id, 48), "unique_id": safe(frame.unique_id, 36)},
                    )
        else:
            assert isinstance(frame, BadFrame)
            MESSAGES.labels(action="unknown", direction="in", outcome="error").inc()
            if allowed:
                log.info("bad frame", extra={"station": safe(self.id, 48), "error": frame.description})
                if frame.respond:
                    await self._send_error(frame.unique_id, frame.kind, frame.description)

    def _within_rate(self) -> bool:
        now = self.ctx.clock.time()
        station = self.ctx.station_buckets.get(self.id, now)
        ip = self.ctx.ip_buckets.get(self.remote_addr, now)
        if allow_all([station, ip], now):
            return True
        RATE_LIMITED.labels(scope="station" if station.tokens < 1.0 else "ip").inc()
        return False

    def _action_label(self, action: str) -> str:
        return action if action in schemas.known_actions(self.version) else "unknown"

    async def _handle(self, call: CallFrame) -> None:
        action = call.action
        label = self._action_label(action)
        if not station_call_allowed(self.boot_status, action, self.triggered):
            # before an Accepted boot every other CALL is a SecurityError, whatever the action (B02.FR.09,
            # B03.FR.07): checked before the action is looked up
            MESSAGES.labels(action=label, direction="in", outcome="error").inc()
            await self._send_error(call.unique_id, Err.SECURITY, "BootNotification not accepted yet")
            if self.boot_status is Registration.NONE and not self.asked_for_boot:
                self.asked_for_boot = True
                self.ctx.on_unregistered_call(self)
            return
        handler = self._routes.get(action)
        if handler is None:
            # OCPP-J: NotImplemented = action not known; NotSupported = known but not supported
            kind = Err.NOT_SUPPORTED if label != "unknown" else Err.NOT_IMPLEMENTED
            MESSAGES.labels(action=label, direction="in", outcome="error").inc()
            await self._send_error(
                call.unique_id,
                kind,
                f"{cap(action, 64)} is not " + ("supported" if kind is Err.NOT_SUPPORTED else "implemented"),
            )
            return
        violation = schemas.validate(self.version, action, "req", call.payload)
        if violation is not None:
            MESSAGES.labels(action=label, direction="in", outcome="error").inc()
            await self._send_error(call.unique_id, violation.kind, violation.description)
            return
        self.relay = await self._forward(call) if self.upstream is not None else None
        try:
            response = await handler(self, call.payload)
            if self.relay is not None and self.relay.answer is not None:
                response = station_answer(action, response, self.relay.answer)
        except Exception:
            log.exception("handler failed", extra={"station": safe(self.id, 48), "action": action})
            MESSAGES.labels(action=label, direction="in", outcome="error").inc()
            await self._send_error(call.unique_id, Err.INTERNAL, "internal error")
            return
        if self.ctx.settings.validate_responses:
            bad = schemas.validate(self.version, action, "conf", response)
            if bad is not None:
                log.error("own response failed schema", extra={"action": action, "error": bad.description})
                await self._send_error(call.unique_id, Err.INTERNAL, "internal error")
                return
        MESSAGES.labels(action=label, direction="in", outcome="ok").inc()
        await self._send(frames.call_result(call.unique_id, response))
        now = self.ctx.clock.time()
        if now - self.touched_at > self.ctx.settings.boot_state_ttl_s / 4:
            # a connection that lives for days keeps its station's boot status from expiring
            self.touched_at = now
            self._background(self.ctx.touch_registration(self))
        after = getattr(self, "after_" + action, None)
        if after is not None:
            after()

    async def _forward(self, call: CallFrame) -> Relay | None:
        """Proxy mode: relay the CALL upstream; a failure there never fails the station's message."""
        assert self.upstream is not None
        try:
            return await self.upstream.forward(call.action, call.payload)
        except Exception:
            log.warning("upstream relay failed; answered locally", extra={"station": safe(self.id, 48)}, exc_info=True)
            return None

    def _background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_error(self, unique_id: str, kind: Err, description: str) -> None:
        await self._send(frames.call_error(unique_id, kind, description, self.version))

    async def _send(self, message: str) -> None:
        if self.closed:
            return
        try:
            await self._connection.send(message)
        except Exception:  # closed underneath us: the receive loop ends and cleans up
            self.closed = True

    # ---- outbound --------------------------------------------------------------------------------

    async def send_call(self, action: str, payload: dict[str, Any], timeout_s: float) -> ResultFrame | ErrorFrame:
        """Send a CALL and wait for its answer (raises TimeoutError, ConnectionError when closed)."""
        async with self._call_lock:
            if self.closed:
                raise ConnectionError("station disconnected")
            uid = f"gw{next(_ids)}"
            fut: asyncio.Future[ResultFrame | ErrorFrame] = asyncio.get_running_loop().create_future()
            self._pending[uid] = fut
            try:
                await self._connection.send(frames.call(uid, action, payload))
                MESSAGES.labels(action=action, direction="out", outcome="ok").inc()
                return await asyncio.wait_for(fut, timeout_s)
            except TimeoutError:
                MESSAGES.labels(action=action, direction="out", outcome="timeout").inc()
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise ConnectionError("station disconnected") from exc
            finally:
                self._pending.pop(uid, None)

    async def close(self, code: int, reason: str) -> None:
        """Close the station's socket (the receive loop then ends and cleans up)."""
        await self._connection.close(code, reason)

    @property
    def close_code(self) -> Any:
        """The WebSocket close code once the socket closed."""
        return self._connection.close_code

    def release_held_events(self) -> list[station_pb2.StationEvent]:
        """Transaction events the sequencer still holds back (on disconnect: published as they are)."""
        return self._sequencer.flush() if self._sequencer is not None else []

    def fail_pending(self) -> None:
        """On close: wake every waiter with ConnectionError."""
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("station disconnected"))
        self._pending.clear()

    # ---- helpers for handlers --------------------------------------------------------------------

    def set_registration(self, status: Registration) -> None:
        self.boot_status = status
        self.registered.set()

    async def answer_boot(self, boot: station_pb2.Boot) -> dict[str, Any]:
        """BootNotification: decide, record, publish (`GatewayContext.register_boot`); a new boot sequence
        forgets what earlier TriggerMessages allowed."""
        d = await self.ctx.register_boot(self, boot)
        self.triggered.clear()
        self.set_registration(d.status)
        return {"status": d.status.value, "currentTime": self.now_iso(), "interval": d.interval_s}

    def after_BootNotification(self) -> None:
        if self.boot_status is Registration.ACCEPTED:
            self.ctx.on_boot_accepted(self)

    async def authorize(self, id_token: str, token_type: str = "") -> Decision:
        """The authorization source's decision for a token (counted by status; never station data)."""
        d = await self.ctx.authorizer.authorize(AuthRequest(self.id, id_token, token_type, self.version))
        AUTHORIZATIONS.labels(status=d.status.lower() if d.status in STATUSES_16 else "other").inc()
        return d

    def upstream_status(self, info_key: str) -> str | None:
        """Proxy mode: the authorization status in the upstream's answer (`idTagInfo`/`idTokenInfo`), if any."""
        answer = self.relay.answer if self.relay is not None else None
        info = answer.get(info_key) if answer is not None else None
        return str(info.get("status")) if isinstance(info, dict) and info.get("status") else None

    async def transaction_id_16(self) -> int:
        """1.6 transactionId for a StartTransaction: the upstream's (proxy mode), the local one given while
        the upstream was down, or gridcharge's own."""
        answer = self.relay.answer if self.relay is not None else None
        if answer is not None and isinstance(answer.get("transactionId"), int):
            return int(answer["transactionId"])
        if self.relay is not None and self.relay.local_tx_id is not None:
            return self.relay.local_tx_id
        return await self.ctx.next_transaction_id()

    def log_security_event(self, p: dict[str, Any]) -> None:
        """A station's SecurityEventNotification goes to the log too (security monitoring reads logs)."""
        log.warning(
            "station security event",
            extra={
                "station": safe(self.id, 48),
                "type": safe(p.get("type", ""), 50),
                "tech_info": safe(p.get("techInfo", ""), 255),
            },
        )

    async def notify(self, action: str, p: dict[str, Any]) -> None:
        """Publish a message that has no domain mapping as a `notification` event (for operators)."""
        ev = self.event()
        ev.notification.CopyFrom(notification(action, p))
        await self.publish(ev)

    def event(self, occurred_at: Any = None) -> station_pb2.StationEvent:
        return new_event(self.id, self.version, self.ctx.producer, occurred_at or self.ctx.clock.now())

    async def publish(self, ev: station_pb2.StationEvent) -> None:
        await self.ctx.publish_event(ev)

    def now_iso(self) -> str:
        """The time now as stations read it (UTC, milliseconds), from one reading of the clock."""
        return iso_utc(self.ctx.clock.now())
