"""A leader lease in the store: exactly one replica of a service is active, the others stand by.

Used where two active replicas would be wrong: the allocator (two would command the same stations) and the
telemetry faust worker (node loads sum over every station). The leader holds `key` (value = replica id,
with a TTL) and renews it every `ttl_s / 3`; a standby takes over once the key has expired, or at once after
a clean `release()`. The store has no value compare-and-set, so a takeover writes with `set_if_newer`
(version = ms of the injected clock, so versions only move forward) and reads back: if two standbys race,
the later write wins and the other sees it on read-back or at its next renewal — a double leader lasts at
most one renewal interval.
"""

from __future__ import annotations

import logging

from gridcharge.shared.clock import Clock
from gridcharge.shared.store.base import Store

log = logging.getLogger(__name__)


class LeaderLease:
    """Acquire/renew/release the lease at `key`; `is_leader` is the last known state."""

    def __init__(self, store: Store, clock: Clock, replica_id: str, ttl_s: float = 15.0, *, key: str) -> None:
        self.store, self.clock, self.me, self.ttl_s, self.key = store, clock, replica_id.encode(), ttl_s, key
        self.is_leader = False
        self.last_check: float | None = None  # POSIX s of the last renew() attempt

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3.0

    async def renew(self) -> bool:
        """Take the lease when free, keep it when ours; True if this replica leads now."""
        self.last_check = self.clock.time()
        try:
            cur = await self.store.get_versioned(self.key)
            if cur is not None and cur[1] != self.me:
                self._set(False)
                return False
            version = int(self.clock.time() * 1000)
            if cur is not None:
                version = max(version, cur[0] + 1)
            await self.store.set_if_newer(self.key, version, self.me, self.ttl_s)
            back = await self.store.get_versioned(self.key)
            self._set(back is not None and back[1] == self.me)
        except Exception:
            log.warning("leader lease check failed; standing by", exc_info=True, extra={"lease": self.key})
            self._set(False)
        return self.is_leader

    async def holder(self) -> str | None:
        """Replica id that holds the lease now, if any."""
        cur = await self.store.get_versioned(self.key)
        return cur[1].decode("utf-8", "replace") if cur is not None else None

    async def release(self) -> None:
        """Give the lease up on a clean stop so a standby takes over at once."""
        if not self.is_leader:
            return
        try:
            cur = await self.store.get_versioned(self.key)
            if cur is not None and cur[1] == self.me:
                await self.store.delete(self.key)
        except Exception:
            log.warning("could not release the leader lease", exc_info=True, extra={"lease": self.key})
        self._set(False)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("leadership changed", extra={"lease": self.key, "leader": leader})
        self.is_leader = leader
