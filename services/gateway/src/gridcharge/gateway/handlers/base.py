"""One station connection: the `ocpp` ChargePoint with the gaps of the library closed in a thin layer.

What this layer adds (the library drops unparseable frames, swaps NotImplemented/NotSupported, validates
in a thread pool and does no boot gating):
- every frame is parsed by `core.frames`; unreadable CALLs get a CALLERROR (id "-1" where unreadable);
- unknown action → NotImplemented, known but unhandled → NotSupported (OCPP-J wording);
- any CALL before an Accepted BootNotification → SecurityError;
- schema violations → the version's error code, description ≤ 255 chars without station data;
- a token-bucket rate limit per connection;
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

from gridcharge.gateway.core import frames, schemas
from gridcharge.gateway.core.errors import Err, Version, cap, safe
from gridcharge.gateway.core.frames import BadFrame, CallFrame, ErrorFrame, ResultFrame
from gridcharge.gateway.core.profiles import Capabilities
from gridcharge.gateway.core.transactions import TransactionSequencer
from gridcharge.gateway.metrics import MESSAGES
from ocpp.charge_point import ChargePoint

if TYPE_CHECKING:
    from gridcharge.gateway.adapters.context import GatewayContext
    from gridcharge.station.v1 import station_pb2

log = logging.getLogger(__name__)

Handler = Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]
_ids = itertools.count(1)


class TokenBucket:
    """Allows `rate` messages/s sustained and `burst` at once, in the injected clock's time (a simulation
    sped up 500x is not a flood: its stations keep their simulated pace)."""

    __slots__ = ("burst", "now", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        self.rate, self.burst, self.tokens, self.now = rate, float(burst), float(burst), now
        self.stamp = now()

    def allow(self) -> bool:
        now = self.now()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class StationSession(ChargePoint):
    """A station's socket. Subclasses set `version` and define `@on(Action)` handlers."""

    version: ClassVar[Version]
    _routes: ClassVar[dict[str, Handler]]

    def __init__(self, station_id: str, connection: Any, ctx: GatewayContext, remote_addr: str = "",
                 security_profile: int = 0) -> None:
        # ChargePoint.__init__ is not called on purpose: it builds a route map, a lock and a queue per
        # connection; the route map is per class here and answers are matched by id (`_pending`).
        self.id = station_id
        self._connection = connection
        self._ocpp_version = self.version.value
        self.logger = log
        self.ctx = ctx
        self.remote_addr = remote_addr
        self.security_profile = security_profile
        self.boot_status = ""                      # "", Pending, Rejected, Accepted
        self.epoch = 0                             # ownership epoch from the registry
        self.capabilities = Capabilities()
        self.closed = False
        self.over_limit = 0                        # frames dropped in a row by the rate limit
        self._closing: asyncio.Future[None] | None = None
        self.bucket = TokenBucket(ctx.settings.rate_limit_per_s, ctx.settings.rate_burst, ctx.clock.time)
        self._pending: dict[str, asyncio.Future[ResultFrame | ErrorFrame]] = {}
        self.queue: deque[Any] = deque()          # command jobs, run one at a time (adapters.dispatcher)
        self.worker: asyncio.Task[None] | None = None
        self._sequencer: TransactionSequencer[station_pb2.StationEvent] | None = None

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
        allowed = self.bucket.allow()   # every frame counts against the per-connection rate
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
                fut.set_result(frame)       # answers to our own CALLs are bounded by those CALLs
            else:
                MESSAGES.labels(action="unknown", direction="in", outcome="error").inc()
                if allowed:
                    log.debug("answer to no pending CALL", extra={"station": safe(self.id, 48),
                                                                 "unique_id": safe(frame.unique_id, 36)})
        else:
            assert isinstance(frame, BadFrame)
            MESSAGES.labels(action="unknown", direction="in", outcome="error").inc()
            if allowed:
                log.info("bad frame", extra={"station": safe(self.id, 48), "error": frame.description})
                if frame.respond:
                    await self._send_error(frame.unique_id, frame.kind, frame.description)

    def _action_label(self, action: str) -> str:
        return action if action in schemas.known_actions(self.version) else "unknown"

    async def _handle(self, call: CallFrame) -> None:
        action = call.action
        label = self._action_label(action)
        handler = self._routes.get(action)
        if handler is None:
            # OCPP-J: NotImplemented = action not known; NotSupported = known but not supported
            kind = Err.NOT_SUPPORTED if label != "unknown" else Err.NOT_IMPLEMENTED
            MESSAGES.labels(action=label, direction="in", outcome="error").inc()
            await self._send_error(call.unique_id, kind, f"{cap(action, 64)} is not " +
                                   ("supported" if kind is Err.NOT_SUPPORTED else "implemented"))
            return
        if action != "BootNotification" and self.boot_status != "Accepted":
            MESSAGES.labels(action=label, direction="in", outcome="error").inc()
            await self._send_error(call.unique_id, Err.SECURITY, "BootNotification not accepted yet")
            return
        violation = schemas.validate(self.version, action, "req", call.payload)
        if violation is not None:
            MESSAGES.labels(action=label, direction="in", outcome="error").inc()
            await self._send_error(call.unique_id, violation.kind, violation.description)
            return
        try:
            response = await handler(self, call.payload)
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
        after = getattr(self, "after_" + action, None)
        if after is not None:
            after()

    async def _send_error(self, unique_id: str, kind: Err, description: str) -> None:
        await self._send(frames.call_error(unique_id, kind, description, self.version))

    async def _send(self, message: str) -> None:
        if self.closed:
            return
        try:
            await self._connection.send(message)
        except Exception:   # closed underneath us: the receive loop ends and cleans up
            self.closed = True

    # ---- outbound --------------------------------------------------------------------------------

    async def send_call(self, action: str, payload: dict[str, Any], timeout_s: float) -> ResultFrame | ErrorFrame:
        """Send a CALL and wait for its answer (raises TimeoutError, ConnectionError when closed)."""
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

    def fail_pending(self) -> None:
        """On close: wake every waiter with ConnectionError."""
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("station disconnected"))
        self._pending.clear()

    # ---- helpers for handlers --------------------------------------------------------------------

    def event(self, occurred_at: Any = None) -> station_pb2.StationEvent:
        from gridcharge.gateway.core.mapping import new_event

        return new_event(self.id, self.version, self.ctx.producer, occurred_at or self.ctx.clock.now())

    async def publish(self, ev: station_pb2.StationEvent) -> None:
        await self.ctx.publish_event(ev)

    def now_iso(self) -> str:
        return str(self.ctx.clock.now().strftime("%Y-%m-%dT%H:%M:%S.") +
                   f"{self.ctx.clock.now().microsecond // 1000:03d}Z")
