"""Which replica owns which station, in the shared store (Redis in production).

Keys (under the deployment's store prefix):
- `gw:epoch:{station}`  counter; every new connection takes the next value (`incr`) as its ownership epoch;
- `gw:owner:{station}`  (epoch, "replica|protocol|since") written with `set_if_newer`, so an older
  connection can never overwrite a newer owner;
- `gw:replica:{replica}` liveness key with a TTL, refreshed while the replica runs: an owner whose
  replica is not alive counts as offline;
- `gw:connected` hash station → "replica|protocol|epoch|since" for the operator API's station list;
- `gw:boot:{station}`  the station's registration status (Accepted / Pending / Rejected) from its last
  BootNotification, kept `boot_state_ttl_s` after it was last connected: a boot is per station, not per
  connection, so a station that reconnects (to any replica) without rebooting keeps its status;
- `gw:pending:{station}` when the current boot sequence of a station listed in `pending_stations` was
  first answered Pending (it is Accepted once `pending_hold_s` have passed since).

A replica may send to a station only while `gw:owner` still holds its own epoch; it checks right
before every CALL, so after the station reconnects elsewhere the old replica cannot send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from gridcharge.gateway.core.boot import Registration
from gridcharge.shared.clock import Clock
from gridcharge.shared.store.base import Store

log = logging.getLogger(__name__)

LIVENESS_TTL_S = 30.0
LIVENESS_REFRESH_S = 10.0


@dataclass(frozen=True)
class Owner:
    replica_id: str
    protocol: str
    epoch: int
    since: float


def _encode(replica_id: str, protocol: str, epoch: int, since: float) -> bytes:
    return f"{replica_id}|{protocol}|{epoch}|{since:.3f}".encode()


def _decode(raw: bytes, epoch: int | None = None) -> Owner | None:
    try:
        replica, protocol, ep, since = raw.decode().split("|")
        return Owner(replica, protocol, epoch if epoch is not None else int(ep), float(since))
    except (ValueError, UnicodeDecodeError):
        return None


class Registry:
    def __init__(self, store: Store, replica_id: str, clock: Clock) -> None:
        self.store, self.replica_id, self.clock = store, replica_id, clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._beat()
        self._task = asyncio.create_task(self._liveness(), name="gw-registry-liveness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.store.delete(f"gw:replica:{self.replica_id}")

    async def _beat(self) -> None:
        await self.store.set(f"gw:replica:{self.replica_id}", b"1", ttl_s=LIVENESS_TTL_S)

    async def _liveness(self) -> None:
        while True:
            await self.clock.sleep(LIVENESS_REFRESH_S)
            try:
                await self._beat()
            except Exception:
                log.warning("registry liveness refresh failed", exc_info=True)

    async def claim(self, station_id: str, protocol: str) -> int:
        """Take ownership for a new connection; returns its epoch (higher than any before)."""
        epoch = await self.store.incr(f"gw:epoch:{station_id}")
        value = _encode(self.replica_id, protocol, epoch, self.clock.time())
        await self.store.set_if_newer(f"gw:owner:{station_id}", epoch, value)
        await self.store.hset("gw:connected", station_id, value)
        return epoch

    async def is_owner(self, station_id: str, epoch: int) -> bool:
        cur = await self.store.get_versioned(f"gw:owner:{station_id}")
        if cur is None or cur[0] != epoch:
            return False
        owner = _decode(cur[1], cur[0])
        return owner is not None and owner.replica_id == self.replica_id

    async def owner(self, station_id: str) -> Owner | None:
        """The live owner of a station, or None when offline (no owner, or its replica is dead)."""
        cur = await self.store.get_versioned(f"gw:owner:{station_id}")
        if cur is None or not cur[1]:
            return None
        owner = _decode(cur[1], cur[0])
        if owner is None:
            return None
        if owner.replica_id != self.replica_id and await self.store.get(f"gw:replica:{owner.replica_id}") is None:
            return None
        return owner

    async def release(self, station_id: str, epoch: int) -> None:
        """On disconnect: forget the station unless a newer connection owns it already.

        The owner record is overwritten with an empty value at a version one above our epoch only if we
        are still the owner; a reconnect elsewhere takes a still higher epoch from the counter (`incr`
        after our claim), so it wins `set_if_newer` whatever the order.
        """
        if not await self.is_owner(station_id, epoch):
            return
        nxt = await self.store.incr(f"gw:epoch:{station_id}")
        if await self.store.set_if_newer(f"gw:owner:{station_id}", nxt, b""):
            cur = await self.store.hget("gw:connected", station_id)
            if cur is not None and (o := _decode(cur)) is not None and o.epoch == epoch:
                await self.store.hdel("gw:connected", station_id)

    async def reassert(self, station_id: str, epoch: int, protocol: str) -> int | None:
        """Check a live connection still owns its station. Returns the epoch to use from now on (a fresh
        claim if a racing `release` emptied the record), or None when another connection owns it."""
        if await self.is_owner(station_id, epoch):
            return epoch
        cur = await self.store.get_versioned(f"gw:owner:{station_id}")
        if cur is None or not cur[1]:
            return await self.claim(station_id, protocol)
        return None

    async def connected(self) -> list[tuple[str, Owner]]:
        """Stations connected to any live replica (for the operator API)."""
        out = []
        alive: dict[str, bool] = {}
        for sid, raw in (await self.store.hgetall("gw:connected")).items():
            o = _decode(raw)
            if o is None:
                continue
            if o.replica_id not in alive:
                alive[o.replica_id] = await self.store.get(f"gw:replica:{o.replica_id}") is not None
            if alive[o.replica_id]:
                out.append((sid, o))
        return sorted(out)

    # ---- registration (boot) state, per station across connections and replicas ----------------------

    async def boot_state(self, station_id: str) -> Registration:
        raw = await self.store.get(f"gw:boot:{station_id}")
        try:
            return Registration(raw.decode()) if raw else Registration.NONE
        except (ValueError, UnicodeDecodeError):
            return Registration.NONE

    async def set_boot_state(self, station_id: str, status: Registration, ttl_s: float) -> None:
        await self.store.set(f"gw:boot:{station_id}", status.value.encode(), ttl_s=ttl_s)

    async def pending_since(self, station_id: str, now: float, ttl_s: float) -> float | None:
        """When this boot sequence was first answered Pending; starts it at `now` when there is none (the
        first writer wins across replicas). None = this call started it."""
        key = f"gw:pending:{station_id}"
        if await self.store.set_if_newer(key, 1, f"{now:.3f}".encode(), ttl_s=ttl_s):
            return None
        cur = await self.store.get_versioned(key)
        try:
            return float(cur[1].decode()) if cur else None
        except (ValueError, UnicodeDecodeError):
            return None

    async def clear_pending(self, station_id: str) -> None:
        await self.store.delete(f"gw:pending:{station_id}")
