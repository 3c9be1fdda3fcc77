"""One contract suite, run against the in-memory store and against real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from gridcharge.shared.store.base import Store
from gridcharge.shared.store.memory import MemoryStore


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    else:
        from gridcharge.shared.store.redis import RedisStore

        rs = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{uuid.uuid4().hex[:10]}:")
        yield rs
        for k in await rs.keys(""):
            await rs.delete(k)
        await rs.close()


async def test_get_set_delete(store: Store) -> None:
    assert await store.get("a") is None
    await store.set("a", b"1")
    assert await store.get("a") == b"1"
    await store.delete("a")
    assert await store.get("a") is None


async def test_ttl_expires(store: Store) -> None:
    await store.set("t", b"x", ttl_s=0.2)
    assert await store.get("t") == b"x"
    await asyncio.sleep(0.35)
    assert await store.get("t") is None


async def test_incr_is_monotonic(store: Store) -> None:
    assert [await store.incr("c") for _ in range(3)] == [1, 2, 3]


async def test_set_if_newer_only_moves_forward(store: Store) -> None:
    assert await store.set_if_newer("owner:cp1", 2, b"gw-a")
    assert not await store.set_if_newer("owner:cp1", 1, b"gw-old")
    assert not await store.set_if_newer("owner:cp1", 2, b"gw-same")
    assert await store.get_versioned("owner:cp1") == (2, b"gw-a")
    assert await store.set_if_newer("owner:cp1", 5, b"gw-b")
    assert await store.get_versioned("owner:cp1") == (5, b"gw-b")


async def test_set_if_newer_under_concurrency_keeps_the_highest(store: Store) -> None:
    await asyncio.gather(*(store.set_if_newer("race", v, str(v).encode()) for v in [3, 9, 1, 7, 5]))
    assert await store.get_versioned("race") == (9, b"9")


async def test_hashes(store: Store) -> None:
    await store.hset("h", "f1", b"1")
    await store.hset("h", "f2", b"2")
    assert await store.hget("h", "f1") == b"1"
    assert await store.hgetall("h") == {"f1": b"1", "f2": b"2"}
    await store.hdel("h", "f1")
    assert await store.hgetall("h") == {"f2": b"2"}


async def test_keys_by_prefix(store: Store) -> None:
    await store.set("plan:s1", b"a")
    await store.set("plan:s2", b"b")
    await store.set("other", b"c")
    assert await store.keys("plan:") == ["plan:s1", "plan:s2"]


async def test_ping(store: Store) -> None:
    assert await store.ping()


async def test_a_burst_beyond_the_pool_waits_instead_of_failing(store: Store) -> None:
    """200 concurrent callers (more than the Redis pool's 100 connections) all succeed."""
    await asyncio.gather(*(store.set(f"burst:{i}", b"x") for i in range(200)))
    assert len(await store.keys("burst:")) == 200
