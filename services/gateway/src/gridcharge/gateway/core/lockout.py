"""Back-off and lockout after failed HTTP Basic authentication (security profiles 1 and 2).

Without it a client could try ~29 passwords a second for as long as it liked. Each failure for a key
(a station id, a source IP) makes the key wait before its next attempt, doubling per failure up to
`max_delay_s`; after `lockout_after` failures within `window_s` the key is locked for `lockout_s`.
An attempt while a key waits or is locked is refused without checking the password, so guessing in
parallel gains nothing, and it does not count as a failure (a station retrying with a good password
gets back in once the wait is over). Success clears the station's key; an IP's count only decays, so one
valid credential cannot wipe an IP's record of guesses at other stations.

Pure: the caller passes a monotonic time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    next_allowed: float = 0.0
    locked_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Policy:
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    lockout_after: int = 10
    lockout_s: float = 300.0
    window_s: float = 900.0  # failures older than this are forgotten


class AuthBackoff:
    """Failed-attempt records per key, for one scope (station ids or IPs)."""

    def __init__(self, policy: Policy, max_keys: int = 100_000) -> None:
        self.policy, self.max_keys = policy, max_keys
        self._records: dict[str, _Record] = {}

    def wait_s(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (0 = now)."""
        r = self._records.get(key)
        if r is None:
            return 0.0
        return max(0.0, r.locked_until - now, r.next_allowed - now)

    def locked(self, key: str, now: float) -> bool:
        r = self._records.get(key)
        return r is not None and r.locked_until > now

    def failure(self, key: str, now: float) -> bool:
        """Record a failed attempt; True when this failure locked the key."""
        p = self.policy
        r = self._records.get(key)
        if r is None:
            if len(self._records) >= self.max_keys:
                self.sweep(now)
            r = self._records[key] = _Record()
        if now - r.last_failure > p.window_s:
            r.failures = 0
        r.failures += 1
        r.last_failure = now
        r.next_allowed = now + min(p.max_delay_s, p.base_delay_s * 2.0 ** min(r.failures - 1, 30))
        if r.failures >= p.lockout_after:
            r.locked_until = now + p.lockout_s
            r.failures = 0  # after the lockout the count starts again
            return True
        return False

    def success(self, key: str) -> None:
        self._records.pop(key, None)

    def sweep(self, now: float) -> None:
        """Forget keys with nothing left to enforce or remember."""
        horizon = self.policy.window_s
        for key in [
            k
            for k, r in self._records.items()
            if r.locked_until <= now and r.next_allowed <= now and now - r.last_failure > horizon
        ]:
            del self._records[key]
        if len(self._records) >= self.max_keys:  # still full (an attack from many keys): oldest first
            oldest = sorted(self._records, key=lambda k: self._records[k].last_failure)
            for key in oldest[: len(oldest) // 2]:
                if self._records[key].locked_until <= now:
                    del self._records[key]
