"""One contract suite, run against the in-process bus and against real Kafka."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from gridcharge.shared.bus.base import DEAD_LETTER_TOPIC, Bus, Outgoing, PublishError, Record
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


async def test_published_records_reach_a_subscriber_with_key_and_value(bus: Bus) -> None:
    got: list[Record] = []

    async def handler(r: Record) -> None:
        got.append(r)

    await bus.publish("contract.a", "k1", b"hello")
    sub = await bus.subscribe(["contract.a"], "g1", handler)
    await wait_until(lambda: len(got) == 1)
    assert (got[0].topic, got[0].key, got[0].value) == ("contract.a", "k1", b"hello")
    await sub.stop()


async def test_per_key_order_is_preserved(bus: Bus) -> None:
    got: dict[str, list[int]] = {}

    async def handler(r: Record) -> None:
        got.setdefault(r.key, []).append(int(r.value))

    sub = await bus.subscribe(["contract.order"], "g", handler)
    for i in range(50):
        await bus.publish("contract.order", f"station-{i % 5}", str(i).encode())
    await wait_until(lambda: sum(len(v) for v in got.values()) == 50)
    for key, seq in got.items():
        assert seq == sorted(seq), key
    await sub.stop()


async def test_each_group_sees_every_record_once(bus: Bus) -> None:
    a: list[bytes] = []
    b: list[bytes] = []

    async def ha(r: Record) -> None:
        a.append(r.value)

    async def hb(r: Record) -> None:
        b.append(r.value)

    sa = await bus.subscribe(["contract.groups"], "ga", ha)
    sb = await bus.subscribe(["contract.groups"], "gb", hb)
    for i in range(20):
        await bus.publish("contract.groups", f"k{i}", str(i).encode())
    await wait_until(lambda: len(a) == 20 and len(b) == 20)
    await asyncio.sleep(0.3)
    assert sorted(a) == sorted(b) and len(set(a)) == 20
    await sa.stop()
    await sb.stop()


async def test_members_of_one_group_share_the_records(bus: Bus) -> None:
    seen: list[tuple[str, bytes]] = []

    def handler_for(name: str) -> Callable[[Record], object]:
        async def h(r: Record) -> None:
            seen.append((name, r.value))

        return h

    s1 = await bus.subscribe(["contract.share"], "shared", handler_for("m1"))  # type: ignore[arg-type]
    s2 = await bus.subscribe(["contract.share"], "shared", handler_for("m2"))  # type: ignore[arg-type]
    await s1.wait_assigned()
    await s2.wait_assigned()
    for i in range(30):
        await bus.publish("contract.share", f"key-{i}", str(i).encode())
    await wait_until(lambda: len(seen) >= 30)
    await asyncio.sleep(0.5)
    values = [v for _, v in seen]
    assert len(values) == len(set(values)) == 30, "a record was delivered twice within one group"
    await s1.stop()
    await s2.stop()


async def test_a_failing_handler_dead_letters_and_keeps_consuming(bus: Bus) -> None:
    ok: list[bytes] = []
    dead: list[Record] = []

    async def handler(r: Record) -> None:
        if r.value == b"poison":
            raise ValueError("cannot parse")
        ok.append(r.value)

    async def dl(r: Record) -> None:
        dead.append(r)

    sub = await bus.subscribe(["contract.poison"], "g", handler)
    dsub = await bus.subscribe([DEAD_LETTER_TOPIC], "dl-watch", dl)
    for v in (b"one", b"poison", b"two"):
        await bus.publish("contract.poison", "same-key", v)
    await wait_until(lambda: ok == [b"one", b"two"])
    await wait_until(lambda: any(d.key == "contract.poison" for d in dead))
    await sub.stop()
    await dsub.stop()


async def test_a_new_group_can_start_at_the_latest_record(bus: Bus) -> None:
    got: list[bytes] = []

    async def handler(r: Record) -> None:
        got.append(r.value)

    await bus.publish("contract.latest", "k", b"old")
    sub = await bus.subscribe(["contract.latest"], "late", handler, from_beginning=False)
    await sub.wait_assigned()
    await asyncio.sleep(0.5)
    await bus.publish("contract.latest", "k", b"new")
    await wait_until(lambda: b"new" in got)
    assert b"old" not in got
    await sub.stop()


# ---- publish_many: order per key, one result per record


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
        too_big = b"x" * (2 * 1024 * 1024)  # above the producer's max request size (1 MiB)
        with pytest.raises(PublishError) as err:
            await kb.publish_many(
                [Outgoing("many.big", "k", b"1"), Outgoing("many.big", "k", too_big), Outgoing("many.big", "k", b"3")]
            )
        assert list(err.value.failed) == [1]
        await wait_until(lambda: len(got) == 2)
        assert got == [b"1", b"3"]
        await sub.stop()
    finally:
        await kb.stop()
