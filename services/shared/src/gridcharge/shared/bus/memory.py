"""In-process bus for the embedded default: same semantics as Kafka, no broker.

Each topic is an append-only log split into partitions by key hash; consumer groups keep their own
offsets; members of a group share partitions. Nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence

from gridcharge.shared.bus.base import Handler, Outgoing, Record, run_handler
from gridcharge.shared.metrics import BUS_MESSAGES

log = logging.getLogger(__name__)


def partition_for(key: str, partitions: int) -> int:
    """Stable key → partition mapping (crc32; Kafka uses murmur2, any stable hash keeps per-key order)."""
    return zlib.crc32(key.encode()) % partitions


class _Member:
    def __init__(self, bus: MemoryBus, topics: Sequence[str], group: str, handler: Handler) -> None:
        self.bus, self.topics, self.group, self.handler = bus, list(topics), group, handler
        self.wakeup = asyncio.Event()
        self.busy = False
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            rec = self.bus._next_for(self)
            if rec is None:
                self.wakeup.clear()
                rec = self.bus._next_for(self)
                if rec is None:
                    self.busy = False
                    self.bus._idle.set()
                    await self.wakeup.wait()
                    continue
            self.busy = True
            BUS_MESSAGES.labels(topic=rec.topic, direction="in").inc()
            await run_handler(self.bus, self.handler, rec, self.group, time.time())
            self.bus._commit(self, rec)

    async def stop(self) -> None:
        self.bus._leave(self)
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def wait_assigned(self, timeout: float = 30.0) -> None:
        return None


class MemoryBus:
    """Bus implementation over in-memory logs (see gridcharge.shared.bus.base for semantics)."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = partitions
        self._logs: dict[str, list[list[Record]]] = {}
        # (group, topic, partition) -> next offset
        self._offsets: dict[tuple[str, str, int], int] = defaultdict(int)
        self._members: dict[str, list[_Member]] = defaultdict(list)
        self._idle = asyncio.Event()
        self._started = False

    def _log(self, topic: str) -> list[list[Record]]:
        if topic not in self._logs:
            self._logs[topic] = [[] for _ in range(self.partitions)]
        return self._logs[topic]

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        for members in list(self._members.values()):
            for m in list(members):
                await m.stop()
        self._started = False

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        parts = self._log(topic)
        p = partition_for(key, self.partitions)
        parts[p].append(
            Record(topic, key, value, partition=p, offset=len(parts[p]), timestamp_ms=int(time.time() * 1000))
        )
        BUS_MESSAGES.labels(topic=topic, direction="out").inc()
        for members in self._members.values():
            for m in members:
                if topic in m.topics:
                    m.wakeup.set()

    async def publish_many(self, records: Sequence[Outgoing]) -> None:
        for r in records:
            await self.publish(r.topic, r.key, r.value)  # in memory a publish cannot fail

    async def subscribe(
        self, topics: Sequence[str], group: str, handler: Handler, *, from_beginning: bool = True
    ) -> _Member:
        member = _Member(self, topics, group, handler)
        for t in topics:
            for p, part in enumerate(self._log(t)):
                key = (group, t, p)
                if key not in self._offsets and not from_beginning:
                    self._offsets[key] = len(part)
        self._members[group].append(member)
        member.task = asyncio.create_task(member.run(), name=f"bus-{group}")
        return member

    def _leave(self, member: _Member) -> None:
        if member in self._members[member.group]:
            self._members[member.group].remove(member)
        for m in self._members[member.group]:
            m.wakeup.set()

    def _owns(self, member: _Member, topic: str, partition: int) -> bool:
        peers = [m for m in self._members[member.group] if topic in m.topics]
        return bool(peers) and peers[partition % len(peers)] is member

    def _next_for(self, member: _Member) -> Record | None:
        for t in member.topics:
            for p, part in enumerate(self._log(t)):
                if not self._owns(member, t, p):
                    continue
                off = self._offsets[(member.group, t, p)]
                if off < len(part):
                    return part[off]
        return None

    def _commit(self, member: _Member, rec: Record) -> None:
        self._offsets[(member.group, rec.topic, rec.partition)] = rec.offset + 1

    def pending(self) -> int:
        """Records published but not yet handled by some subscribed group."""
        n = 0
        for group, members in self._members.items():
            topics = {t for m in members for t in m.topics}
            for t in topics:
                for p, part in enumerate(self._log(t)):
                    n += len(part) - self._offsets[(group, t, p)]
        return n + sum(1 for ms in self._members.values() for m in ms if m.busy)

    async def flush(self) -> None:
        """Wait until every subscribed group has handled everything published so far."""
        for _ in range(100000):
            if self.pending() == 0:
                return
            await asyncio.sleep(0)
        log.warning("memory bus flush gave up with %d pending", self.pending())
