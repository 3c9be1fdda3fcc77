"""Kafka implementation of the bus (aiokafka): idempotent producer, acks=all, keyed records,
consumer groups with manual commits after the handler ran, clean shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from aiokafka.structs import TopicPartition
from gridcharge.shared.bus.base import Handler, Outgoing, PublishError, Record, run_handler
from gridcharge.shared.contracts import TOPICS_BY_NAME
from gridcharge.shared.metrics import BUS_MESSAGES

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0  # a clean stop takes a round trip; this bounds it when the broker is gone or not leading


async def _stop_bounded(what: str, coro: Coroutine[Any, Any, None], timeout_s: float) -> bool:
    """Run a client's stop(); False (and a warning) if it did not finish within `timeout_s`."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if task in done:
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s stop failed: %r", what, task.exception())
        return True
    log.warning("%s did not stop within %.0f s (broker unavailable?); closing it anyway", what, timeout_s)
    task.cancel()
    await asyncio.wait({task})
    return False


async def close_producer(producer: AIOKafkaProducer, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop (flush, then close) a producer, but not forever.

    The idempotent producer retries an unacknowledged batch without end (aiokafka never expires batches
    when idempotence is on), so while the broker is down, restarting, or answering NotLeaderForPartition,
    `producer.stop()` waits indefinitely and so does every `publish` awaiting such a batch. After
    `timeout_s` the batches still pending are failed (their publishers get KafkaConnectionError instead
    of hanging) and the sender and connections are closed.
    """
    if await _stop_bounded("kafka producer", producer.stop(), timeout_s):
        return
    if producer._sender is not None:
        await _stop_bounded("kafka producer sender", producer._sender.close(), timeout_s)
    await _stop_bounded("kafka producer connections", producer.client.close(), timeout_s)
    err = KafkaConnectionError(f"producer closed before the broker acknowledged (stop took > {timeout_s:.0f} s)")
    producer._message_accumulator.fail_all(err)  # what aiokafka's sender does on a fatal error


def make_producer(bootstrap: str, client_id: str = "gridcharge") -> AIOKafkaProducer:
    """Idempotent producer with acks=all: no duplicates on retry, nothing acknowledged before replicated."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=30000,
        retry_backoff_ms=200,
    )


def make_consumer(bootstrap: str, group: str, *, from_beginning: bool = True, **kw: Any) -> AIOKafkaConsumer:
    """Group consumer that commits only after processing (at-least-once)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        session_timeout_ms=30000,  # tolerate a busy event loop (a long re-plan) without eviction
        heartbeat_interval_ms=3000,
        metadata_max_age_ms=5000,
        **kw,
    )


class _KafkaMember:
    def __init__(self, bus: KafkaBus, topics: Sequence[str], group: str, handler: Handler, from_beginning: bool):
        self.bus, self.topics, self.group, self.handler = bus, list(topics), group, handler
        self.consumer = make_consumer(bus.bootstrap, bus.prefix + group, from_beginning=from_beginning)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.subscribe([self.bus.prefix + t for t in self.topics])
        self.task = asyncio.create_task(self._run(), name=f"kafka-{self.group}")

    async def wait_assigned(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {self.group}: no partitions assigned after {timeout}s")
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        plen = len(self.bus.prefix)
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=500)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kafka fetch failed; retrying", extra={"group": self.group})
                await asyncio.sleep(1.0)
                continue
            for tp, msgs in batches.items():
                for m in msgs:
                    rec = Record(
                        topic=m.topic[plen:],
                        key=(m.key or b"").decode("utf-8", "replace"),
                        value=m.value or b"",
                        partition=m.partition,
                        offset=m.offset,
                        timestamp_ms=m.timestamp,
                    )
                    BUS_MESSAGES.labels(topic=rec.topic, direction="in").inc()
                    await run_handler(self.bus, self.handler, rec, self.group, time.time())
                    self.bus._last_activity = time.monotonic()
                if msgs:
                    with contextlib.suppress(Exception):
                        await self.consumer.commit({tp: msgs[-1].offset + 1})

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await _stop_bounded(f"kafka consumer {self.group}", self.consumer.stop(), STOP_TIMEOUT_S)


class KafkaBus:
    """Bus over a Kafka cluster. `prefix` is prepended to topics and groups (tests, tenants)."""

    def __init__(self, bootstrap: str, *, prefix: str = "", client_id: str = "gridcharge") -> None:
        self.bootstrap, self.prefix, self.client_id = bootstrap, prefix, client_id
        self._producer: AIOKafkaProducer | None = None
        self._members: list[_KafkaMember] = []
        self._known_topics: set[str] = set()
        self._last_activity = time.monotonic()

    async def start(self) -> None:
        self._producer = make_producer(self.bootstrap, self.client_id)
        await self._producer.start()

    async def stop(self) -> None:
        for m in list(self._members):
            await m.stop()
        self._members.clear()
        if self._producer is not None:
            await close_producer(self._producer)
            self._producer = None

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create topics with their registry settings (partitions, compaction, retention) if missing."""
        missing = [t for t in topics if t not in self._known_topics]
        if not missing:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id + "-admin")
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            new = []
            for t in missing:
                if self.prefix + t in existing:
                    continue
                spec = TOPICS_BY_NAME.get(t)
                cfg = {}
                partitions = 3
                if spec is not None:
                    partitions = spec.partitions
                    cfg["cleanup.policy"] = "compact" if spec.compacted else "delete"
                    cfg["retention.ms"] = str(spec.retention_ms)
                new.append(
                    NewTopic(self.prefix + t, num_partitions=partitions, replication_factor=1, topic_configs=cfg)
                )
            if new:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(new)
            self._known_topics.update(missing)
        finally:
            await admin.close()

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        if self._producer is None:
            raise RuntimeError("KafkaBus.publish before start()")
        if topic not in self._known_topics:
            await self.ensure_topics([topic])
        await self._producer.send_and_wait(self.prefix + topic, value=value, key=key.encode())
        BUS_MESSAGES.labels(topic=topic, direction="out").inc()

    async def publish_many(self, records: Sequence[Outgoing]) -> None:
        """Enqueue every record in order, then wait for all acknowledgements (one batch round trip, not one
        per record). The idempotent producer keeps the order within a partition, so per key too."""
        if self._producer is None:
            raise RuntimeError("KafkaBus.publish_many before start()")
        missing = list(dict.fromkeys(r.topic for r in records if r.topic not in self._known_topics))
        if missing:
            await self.ensure_topics(missing)
        failed: dict[int, BaseException] = {}
        futs: dict[int, asyncio.Future[Any]] = {}
        for i, r in enumerate(records):
            try:
                futs[i] = await self._producer.send(self.prefix + r.topic, value=r.value, key=r.key.encode())
            except Exception as exc:  # not enqueued (e.g. too large); the rest still go
                failed[i] = exc
        results = await asyncio.gather(*futs.values(), return_exceptions=True)
        for i, res in zip(futs, results, strict=True):
            if isinstance(res, BaseException):
                failed[i] = res
            else:
                BUS_MESSAGES.labels(topic=records[i].topic, direction="out").inc()
        if failed:
            raise PublishError(failed)

    async def subscribe(
        self, topics: Sequence[str], group: str, handler: Handler, *, from_beginning: bool = True
    ) -> _KafkaMember:
        await self.ensure_topics(topics)
        member = _KafkaMember(self, topics, group, handler, from_beginning)
        await member.start()
        self._members.append(member)
        return member

    async def flush(self) -> None:
        if self._producer is not None:
            await self._producer.flush()

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Latest offsets per partition (for lag metrics and tests)."""
        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await c.start()
        try:
            parts = c.partitions_for_topic(self.prefix + topic) or set()
            tps = [TopicPartition(self.prefix + topic, p) for p in parts]
            res = await c.end_offsets(tps)
            return {tp.partition: off for tp, off in res.items()}
        finally:
            await c.stop()
