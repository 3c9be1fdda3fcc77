"""Redis implementation of the store (redis-py asyncio). Versioned values are hashes {v, d}."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

# Atomic compare-and-set on a version number: KEYS[1], ARGV = version, value, ttl_ms (0 = none)
_SET_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


def _raw(v: bytes | str) -> bytes:
    return v if isinstance(v, bytes) else v.encode()


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class RedisStore:
    def __init__(self, url: str, *, prefix: str = "", max_connections: int = 100) -> None:
        self.prefix = prefix
        # A blocking pool: a burst of concurrent callers (e.g. 100 commands at once in the gateway) waits up
        # to 10 s for a free connection instead of failing with MaxConnectionsError.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=10,
            socket_timeout=5,
            socket_connect_timeout=5,
            health_check_interval=10,
        )
        self._r: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._cas = self._r.register_script(_SET_IF_NEWER)

    def _k(self, key: str) -> str:
        return self.prefix + key

    async def get(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._r.get(self._k(key)))

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        px = int(ttl_s * 1000) if ttl_s else None
        await self._r.set(self._k(key), value, px=px)

    async def delete(self, key: str) -> None:
        await self._r.delete(self._k(key))

    async def incr(self, key: str) -> int:
        return int(await self._r.incr(self._k(key)))

    async def set_if_newer(self, key: str, version: int, value: bytes, ttl_s: float | None = None) -> bool:
        ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        res: Any = await self._cas(keys=[self._k(key)], args=[version, value, ttl_ms])
        return bool(int(res))

    async def get_versioned(self, key: str) -> tuple[int, bytes] | None:
        v, d = await self._r.hmget(self._k(key), ["v", "d"])
        if v is None or d is None:
            return None
        return int(v), _raw(d)

    async def hset(self, name: str, field: str, value: bytes) -> None:
        await self._r.hset(self._k(name), field, value)

    async def hget(self, name: str, field: str) -> bytes | None:
        return cast(bytes | None, await self._r.hget(self._k(name), field))

    async def hgetall(self, name: str) -> dict[str, bytes]:
        raw = await self._r.hgetall(self._k(name))
        return {_text(k): _raw(v) for k, v in raw.items()}

    async def hdel(self, name: str, field: str) -> None:
        await self._r.hdel(self._k(name), field)

    async def keys(self, prefix: str) -> list[str]:
        out = []
        n = len(self.prefix)
        async for k in self._r.scan_iter(match=self._k(prefix) + "*", count=500):
            out.append(k.decode()[n:])
        return sorted(out)

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._r.aclose()
