"""Embedded runtime: the core fed by a subscription on `rt.bus` (in-process bus, or Kafka without faust)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gridcharge.shared.bus.base import Record, Subscription
from gridcharge.shared.runtime import Runtime
from gridcharge.telemetry.adapters.engine import INPUTS, Engine
from gridcharge.telemetry.core import Outcome

AfterRecord = Callable[[str, str, Outcome | None], Awaitable[None]]


class BusRuntime:
    """Subscribes to every telemetry input topic as one consumer group; state lives in memory."""

    kind = "bus"

    def __init__(self, rt: Runtime, engine: Engine, group: str, after: AfterRecord | None = None) -> None:
        self.rt, self.engine, self.group, self.after = rt, engine, group, after
        self._sub: Subscription | None = None
        self.ready = False

    async def start(self) -> None:
        self._sub = await self.rt.bus.subscribe(list(INPUTS), self.group, self._handle)
        self.ready = True

    async def _handle(self, rec: Record) -> None:
        outcome = self.engine.handle(rec.topic, rec.value, self.rt.clock.time())
        self.engine.core.take_dirty()  # nothing to persist in this runtime
        if self.after is not None:
            await self.after(rec.topic, rec.key, outcome)

    async def stop(self) -> None:
        self.ready = False
        if self._sub is not None:
            await self._sub.stop()
            self._sub = None
