"""`Bus.publish_many` on the in-process bus and on real Kafka: order per key, one result per record."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from gridcharge.shared.bus.base import Bus, Outgoing, PublishError, Record
from gridcharge.shared.bus.memory import MemoryBus

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "memory":
        b = MemoryBus()
        await b.start()
        yield b
        await b.stop()
    else:
        from gridcharge.shared.bus.kafka import KafkaBus

        bootstrap = request.getfixturevalue("kafka_bootstrap")
        kb = KafkaBus(bootstrap, prefix=f"t{uuid.uuid4().hex[:10]}.")
        await kb.start()
        yield kb
        await kb.stop()


async def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_publish_many_keeps_the_order_per_key_across_topics(bus: Bus) -> None:
    got: dict[str, list[int]] = {}

    async def handler(r: Record) -> None:
        got.setdefault(r.key, []).append(int(r.value))

    sub = await bus.subscribe(["many.a", "many.b"], "g-many", handler, from_beginning=True)
    records = [Outgoing("many.a" if i % 3 else "many.b", f"k{i % 4}", str(i).encode()) for i in range(200)]
    await bus.publish_many(records)
    await wait_until(lambda: sum(len(v) for v in got.values()) == 200)
    for k, seq in got.items():
        sent_a = [int(r.value) for r in records if r.key == k and r.topic == "many.a"]
        assert [x for x in seq if x % 3] == sent_a, f"order of {k} on many.a"
    await sub.stop()


async def test_publish_many_of_nothing_returns(bus: Bus) -> None:
    await bus.publish_many([])


@pytest.mark.kafka
async def test_kafka_publish_many_names_the_records_it_could_not_send(kafka_bootstrap: str) -> None:
    from gridcharge.shared.bus.kafka import KafkaBus

    kb = KafkaBus(kafka_bootstrap, prefix=f"t{uuid.uuid4().hex[:10]}.")
    await kb.start()
    got: list[bytes] = []

    async def handler(r: Record) -> None:
        got.append(r.value)

    try:
        sub = await kb.subscribe(["many.big"], "g-big", handler, from_beginning=True)
        too_big = b"x" * (2 * 1024 * 1024)   # above the producer's max request size (1 MiB)
        with pytest.raises(PublishError) as err:
            await kb.publish_many([Outgoing("many.big", "k", b"1"), Outgoing("many.big", "k", too_big),
                                   Outgoing("many.big", "k", b"3")])
        assert list(err.value.failed) == [1]
        await wait_until(lambda: len(got) == 2)
        assert got == [b"1", b"3"]
        await sub.stop()
    finally:
        await kb.stop()
