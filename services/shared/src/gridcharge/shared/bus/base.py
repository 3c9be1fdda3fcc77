"""The bus interface every service codes against (Kafka in production, in-process when embedded).

Semantics both implementations share (checked by tests/contract/test_bus_contract.py):
- records are keyed; records with the same key keep their order for every consumer;
- each consumer group sees every record once; members of one group share the partitions;
- a new group starts at the earliest retained record (or the latest if `from_beginning=False`);
- a handler exception does not stop the subscription: the record is dead-lettered and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gridcharge.common.v1 import common_pb2
from gridcharge.shared.codec import to_timestamp
from gridcharge.shared.metrics import BUS_DEAD_LETTERS

log = logging.getLogger(__name__)

DEAD_LETTER_TOPIC = "gridcharge.deadletter.v1"  # = contracts.DEAD_LETTERS.name


@dataclass(frozen=True, slots=True)
class Record:
    topic: str  # without the deployment's topic prefix
    key: str
    value: bytes
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0


Handler = Callable[[Record], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to publish: topic (without prefix), key, value."""

    topic: str
    key: str
    value: bytes


class PublishError(Exception):
    """`publish_many` could not send some records: `failed` maps their index in the batch to the error."""

    def __init__(self, failed: dict[int, BaseException]) -> None:
        first = next(iter(failed.values()), None)
        super().__init__(f"{len(failed)} record(s) not acknowledged; first: {first!r}"[:500])
        self.failed = failed


class Subscription(Protocol):
    async def stop(self) -> None: ...

    async def wait_assigned(self, timeout: float = 30.0) -> None:
        """Return once this member has its partitions (immediate in memory)."""
        ...


class Bus(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        """Send one record; returns once the broker acknowledged it (acks=all on Kafka)."""
        ...

    async def publish_many(self, records: Sequence[Outgoing]) -> None:
        """Send records in order (as `publish` one after the other would) and return once the broker
        acknowledged all of them; on Kafka they share batches instead of waiting one round trip each.
        Raises PublishError naming the records that were not acknowledged (the others were)."""
        ...

    async def subscribe(
        self, topics: Sequence[str], group: str, handler: Handler, *, from_beginning: bool = True
    ) -> Subscription:
        """Deliver records of `topics` to `handler`, one at a time, as member of consumer `group`."""
        ...

    async def flush(self) -> None:
        """Wait until every record published so far has been sent (and, in memory, handled)."""
        ...


def dead_letter_value(record: Record, error: BaseException, consumer: str, now_s: float) -> bytes:
    """Serialise a DeadLetter for a record its handler could not process."""
    return common_pb2.DeadLetter(
        topic=record.topic,
        key=record.key,
        value=record.value,
        error=f"{type(error).__name__}: {error}"[:1000],
        consumer=consumer,
        failed_at=to_timestamp(now_s),
    ).SerializeToString()


async def run_handler(bus: Bus, handler: Handler, record: Record, group: str, now_s: float) -> None:
    """Call a handler; on failure log, count and dead-letter the record instead of crash-looping."""
    try:
        await handler(record)
    except Exception as exc:
        BUS_DEAD_LETTERS.labels(topic=record.topic, reason=type(exc).__name__).inc()
        log.warning(
            "handler failed; record dead-lettered",
            extra={"topic": record.topic, "key": record.key[:64], "group": group, "error": repr(exc)[:300]},
        )
        if record.topic != DEAD_LETTER_TOPIC:
            try:
                await bus.publish(DEAD_LETTER_TOPIC, record.topic, dead_letter_value(record, exc, group, now_s))
            except Exception:  # the dead-letter write itself failing must not kill the consumer
                log.exception("could not write dead letter")
