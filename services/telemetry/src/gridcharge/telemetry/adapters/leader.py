"""Active/standby for the faust worker: a lease in the store (Redis) says which replica runs it.

Node loads sum over every station, so exactly one worker may own the input partitions. Replicas that
do not hold the lease stand by without joining the consumer group; when the leader stops (lease
released) or dies (lease expires after `ttl_s`), a standby takes over and recovers the state from the
changelog topics. Versions are milliseconds of the injected clock, so they only move forward.
"""

from __future__ import annotations

import logging

from gridcharge.shared.clock import Clock
from gridcharge.shared.store.base import Store

log = logging.getLogger(__name__)

LEADER_KEY = "telemetry:leader"


class LeaderLease:
    """Acquire/renew/release the telemetry lease; `is_leader` is the last known state."""

    def __init__(self, store: Store, clock: Clock, replica_id: str, ttl_s: float = 15.0,
                 key: str = LEADER_KEY) -> None:
        self.store, self.clock, self.me, self.ttl_s, self.key = store, clock, replica_id.encode(), ttl_s, key
        self.is_leader = False

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3.0

    async def renew(self) -> bool:
        """Take the lease when free, keep it when ours; True if this replica leads now."""
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
            log.warning("telemetry lease check failed; standing by", exc_info=True)
            self._set(False)
        return self.is_leader

    async def holder(self) -> str | None:
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
            log.warning("could not release the telemetry lease", exc_info=True)
        self._set(False)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("telemetry leadership changed", extra={"leader": leader})
        self.is_leader = leader
