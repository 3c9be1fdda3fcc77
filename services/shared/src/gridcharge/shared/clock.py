"""Injectable clocks: the real one, and a simulated one so simulations run faster than real time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Time source used by every service; never call datetime.now() or asyncio.sleep() directly."""

    def now(self) -> datetime:
        """Current UTC time (timezone-aware)."""
        ...

    def time(self) -> float:
        """Current time as a POSIX timestamp in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class RealClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class SimClock:
    """Simulated time that advances only when told to (or by `run_for` in steps).

    Sleepers wake in time order as `advance` moves the clock past their deadline, so a simulated day
    of timers runs in however long the work itself takes.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 6, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("SimClock start must be timezone-aware")
        self._t = start.timestamp()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._t, UTC)

    def time(self) -> float:
        return self._t

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + max(0.0, seconds), next(self._seq), fut))
        await fut

    def next_deadline(self) -> float | None:
        """POSIX time of the earliest pending sleeper, or None."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper whose deadline passes, in order."""
        target = self._t + seconds
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            _, _, fut = heapq.heappop(self._sleepers)
            self._t = max(self._t, deadline)
            if not fut.done():
                fut.set_result(None)
            # let woken tasks run (and schedule new sleepers) before moving on
            for _ in range(3):
                await asyncio.sleep(0)
        self._t = target
        await asyncio.sleep(0)

    async def advance_to(self, when: datetime) -> None:
        await self.advance((when - self.now()).total_seconds())

    def __repr__(self) -> str:
        return f"SimClock({self.now().isoformat()})"


def parse_duration(text: str) -> timedelta:
    """Parse '90s', '15m', '2h', '1d' or plain seconds into a timedelta."""
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return timedelta(seconds=float(text[:-1]) * units[text[-1]])
    return timedelta(seconds=float(text))
