"""Bootstrap: builds the real or in-process adapters from settings (the one place that chooses).

Services receive a `Runtime` and never construct a bus or store themselves, so tests and the
embedded mode swap adapters without touching service code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field

from gridcharge.shared.bus.base import Bus
from gridcharge.shared.bus.kafka import KafkaBus
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.clock import Clock, RealClock
from gridcharge.shared.config import Settings
from gridcharge.shared.http import Health
from gridcharge.shared.store.base import Store
from gridcharge.shared.store.memory import MemoryStore
from gridcharge.shared.store.redis import RedisStore

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What a service needs from the outside world."""

    settings: Settings
    bus: Bus
    store: Store
    clock: Clock
    health: Health = field(default_factory=Health)


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    """Kafka + Redis when settings.bus == 'kafka', else the in-process bus and in-memory store."""
    clock = clock or RealClock()
    bus: Bus
    store: Store
    if settings.bus == "kafka":
        bus = KafkaBus(settings.kafka_bootstrap, prefix=settings.topic_prefix, client_id=settings.replica_id)
        store = RedisStore(settings.redis_url, prefix=settings.store_prefix)
    else:
        bus = MemoryBus()
        store = MemoryStore(clock)
    rt = Runtime(settings=settings, bus=bus, store=store, clock=clock)
    rt.health.add("store", store.ping)
    return rt


async def wait_for_shutdown() -> None:
    """Block until SIGINT/SIGTERM (Kubernetes stops pods with SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
