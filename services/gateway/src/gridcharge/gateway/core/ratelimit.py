"""Inbound rate limits: token buckets kept per station id and per source IP, not per connection.

A bucket per connection let a station reset its allowance by reconnecting (326 msg/s from one id with a
20 msg/s limit, ~950 msg/s from two ids); here the buckets outlive connections. They are in-process, per
gateway replica: a station spreading reconnects over N replicas gets at most N times its rate, which the
per-replica connection caps bound anyway.

Pure: the caller passes the time (the injected clock's, so a sped-up simulation is not a flood).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TokenBucket:
    """Allows `rate` per second sustained and `burst` at once."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, float(burst), float(burst), now

    def refill(self, now: float) -> float:
        """Tokens available at `now` (time running backwards adds nothing)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)
        return self.tokens

    def allow(self, now: float) -> bool:
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full_at(self) -> float:
        """When this bucket is full again (from then on it equals a fresh one)."""
        return self.stamp + (self.burst - self.tokens) / self.rate


class BucketTable(Generic[K]):
    """One bucket per key. A bucket that has refilled completely equals a new one, so it is dropped
    (swept when the table grows): memory stays proportional to the keys active within burst/rate seconds."""

    def __init__(self, rate: float, burst: float, sweep_above: int = 4096) -> None:
        self.rate, self.burst, self.sweep_above = rate, burst, sweep_above
        self._buckets: dict[K, TokenBucket] = {}
        self._next_sweep = sweep_above

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: K, now: float) -> TokenBucket:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self._next_sweep:
                self.sweep(now)
            b = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return b

    def sweep(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full_at() <= now]:
            del self._buckets[key]
        self._next_sweep = max(self.sweep_above, 2 * len(self._buckets))


def allow_all(buckets: list[TokenBucket], now: float) -> bool:
    """Take one token from every bucket, or from none when any is empty (a frame refused by the IP's
    bucket does not also use up the station's allowance)."""
    if all(b.refill(now) >= 1.0 for b in buckets):
        for b in buckets:
            b.tokens -= 1.0
        return True
    return False
