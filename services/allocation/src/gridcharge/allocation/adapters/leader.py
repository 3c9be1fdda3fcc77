"""Leader lease in the store: only one allocator replica commands stations.

The leader holds key ``allocation:leader`` (value = replica id, with a TTL) and renews it every
``ttl_s / 3``. A standby takes over once the key has expired. The store offers no value
compare-and-set, so a takeover writes with ``set_if_newer`` (version = ms timestamp) and reads back:
if two standbys race, the later write wins and the other sees it on read-back or at its next renewal
— a double leader lasts at most one renewal interval, and both would still only send profiles that
fit the worst-case budget of the stations they know.
"""

from __future__ import annotations

import logging

from gridcharge.shared.clock import Clock
from gridcharge.shared.store.base import Store

log = logging.getLogger(__name__)

LEADER_KEY = "allocation:leader"


class LeaderLease:
    """Acquire/renew the allocation leader lease; ``is_leader`` is the last known state."""

    def __init__(self, store: Store, clock: Clock, replica_id: str, ttl_s: float = 15.0,
                 key: str = LEADER_KEY) -> None:
        self.store, self.clock, self.me, self.ttl_s, self.key = store, clock, replica_id.encode(), ttl_s, key
        self.is_leader = False
        self.last_check: float | None = None

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3.0

    async def renew(self) -> bool:
        """Try to take or keep the lease; returns whether this replica leads now."""
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
            log.warning("leader lease check failed; standing by", exc_info=True)
            self._set(False)
        return self.is_leader

    async def release(self) -> None:
        """Give the lease up (clean shutdown) so a standby takes over at once."""
        if not self.is_leader:
            return
        try:
            cur = await self.store.get_versioned(self.key)
            if cur is not None and cur[1] == self.me:
                await self.store.delete(self.key)
        except Exception:
            log.warning("could not release leader lease", exc_info=True)
        self._set(False)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("allocation leadership changed", extra={"leader": leader})
        self.is_leader = leader
