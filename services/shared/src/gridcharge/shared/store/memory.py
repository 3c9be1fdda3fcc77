"""In-memory store for the embedded default; TTLs follow the injected clock."""

from __future__ import annotations

from gridcharge.shared.clock import Clock, RealClock


class MemoryStore:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or RealClock()
        self._kv: dict[str, tuple[bytes, float | None]] = {}
        self._ver: dict[str, tuple[int, bytes, float | None]] = {}
        self._h: dict[str, dict[str, bytes]] = {}

    def _alive(self, exp: float | None) -> bool:
        return exp is None or exp > self.clock.time()

    def _exp(self, ttl_s: float | None) -> float | None:
        return None if ttl_s is None else self.clock.time() + ttl_s

    async def get(self, key: str) -> bytes | None:
        item = self._kv.get(key)
        if item is None or not self._alive(item[1]):
            return None
        return item[0]

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._kv[key] = (value, self._exp(ttl_s))

    async def delete(self, key: str) -> None:
        self._kv.pop(key, None)
        self._ver.pop(key, None)
        self._h.pop(key, None)

    async def incr(self, key: str) -> int:
        cur = int((await self.get(key)) or b"0") + 1
        self._kv[key] = (str(cur).encode(), None)
        return cur

    async def set_if_newer(self, key: str, version: int, value: bytes, ttl_s: float | None = None) -> bool:
        cur = self._ver.get(key)
        if cur is not None and self._alive(cur[2]) and cur[0] >= version:
            return False
        self._ver[key] = (version, value, self._exp(ttl_s))
        return True

    async def get_versioned(self, key: str) -> tuple[int, bytes] | None:
        cur = self._ver.get(key)
        if cur is None or not self._alive(cur[2]):
            return None
        return cur[0], cur[1]

    async def hset(self, name: str, field: str, value: bytes) -> None:
        self._h.setdefault(name, {})[field] = value

    async def hget(self, name: str, field: str) -> bytes | None:
        return self._h.get(name, {}).get(field)

    async def hgetall(self, name: str) -> dict[str, bytes]:
        return dict(self._h.get(name, {}))

    async def hdel(self, name: str, field: str) -> None:
        self._h.get(name, {}).pop(field, None)

    async def keys(self, prefix: str) -> list[str]:
        live = [k for k, (_, e) in self._kv.items() if self._alive(e)]
        live += [k for k, (_, _, e) in self._ver.items() if self._alive(e)]
        live += [k for k, h in self._h.items() if h]
        return sorted({k for k in live if k.startswith(prefix)})

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
