"""Fixtures for cross-service tests: the real Kafka and Redis that `make test` started.

Tests that need them are marked `kafka` / `redis` and FAIL (not skip) when the service is down:
a skipped integration test would hide a broken environment.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

KAFKA = os.environ.get("GRIDCHARGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REDIS = os.environ.get("GRIDCHARGE_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topics, groups and keys of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def kafka_bootstrap() -> str:
    if not _reachable(KAFKA):
        pytest.fail(f"Kafka not reachable at {KAFKA}: run `make kafka` (make test starts it)")
    return KAFKA


@pytest.fixture
def redis_url() -> str:
    hostport = REDIS.split("//", 1)[1].split("/", 1)[0]
    if not _reachable(hostport):
        pytest.fail(f"Redis not reachable at {REDIS}: run `make redis` (make test starts it)")
    return REDIS


@pytest.fixture
async def kafka_bus(kafka_bootstrap: str, unique: str) -> AsyncIterator[object]:
    from gridcharge.shared.bus.kafka import KafkaBus

    bus = KafkaBus(kafka_bootstrap, prefix=f"t{unique}.")
    await bus.start()
    yield bus
    await bus.stop()


@pytest.fixture
async def redis_store(redis_url: str, unique: str) -> AsyncIterator[object]:
    from gridcharge.shared.store.redis import RedisStore

    store = RedisStore(redis_url, prefix=f"t{unique}:")
    yield store
    for k in await store.keys(""):
        await store.delete(k)
    await store.close()
