from __future__ import annotations

from gridcharge.shared.clock import SimClock
from gridcharge.shared.leader import LeaderLease
from gridcharge.shared.store.memory import MemoryStore


async def test_one_leader_standby_takes_over_after_ttl_or_release() -> None:
    clock = SimClock()
    store = MemoryStore(clock)
    a = LeaderLease(store, clock, "a", ttl_s=15, key="svc:leader")
    b = LeaderLease(store, clock, "b", ttl_s=15, key="svc:leader")
    assert await a.renew() and not await b.renew()
    assert await b.holder() == "a"
    await clock.advance(10)
    assert await a.renew() and not await b.renew()  # renewal keeps it
    await clock.advance(16)  # a died: its lease lapses
    assert await b.renew() and not await a.renew()
    await b.release()
    assert await a.renew()  # clean release: taken over at once
