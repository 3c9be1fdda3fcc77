"""Reachability of the VTN: a small state machine on an injected time (POSIX s), no I/O.

    connecting ──ok──> up ──fail──> unreachable ──(fallback_after_s since the last success)──> fallback
         │                ^               │                                                     │
         └──(fallback_after_s since start)┼───────────────────────ok─────────────────────────────┘
                                          └──ok──> up

``unreachable``: the last known limits stay (until their windows end). ``fallback``: the configured fallback
limit of each node applies as well. Before the first success the VEN knows no limits at all, so it counts from
its start: a VEN that never reaches its VTN applies the fallback after the same time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["connecting", "up", "unreachable", "fallback"]


@dataclass
class Transition:
    """A change of state worth a log line: ``before`` → ``after`` at ``at``, with the error that caused it."""

    before: State
    after: State
    at: float
    error: str = ""


class VtnLink:
    """Tracks successes and failures of VTN polls; ``fallback_after_s`` > 0."""

    def __init__(self, fallback_after_s: float, started_at: float) -> None:
        if fallback_after_s <= 0:
            raise ValueError("fallback_after_s must be > 0")
        self.fallback_after_s = fallback_after_s
        self.started_at = started_at
        self.state: State = "connecting"
        self.last_success_at: float | None = None
        self.failing_since: float | None = None
        self.last_error = ""

    def _move(self, to: State, at: float, error: str = "") -> Transition | None:
        if to == self.state:
            return None
        before, self.state = self.state, to
        return Transition(before, to, at, error)

    def success(self, now: float) -> Transition | None:
        self.last_success_at, self.failing_since, self.last_error = now, None, ""
        return self._move("up", now)

    def failure(self, now: float, error: str) -> Transition | None:
        self.last_error = error[:300]
        if self.failing_since is None:
            self.failing_since = now
        t = self.tick(now)
        if t is None and self.state == "up":
            return self._move("unreachable", now, self.last_error)
        return t

    def tick(self, now: float) -> Transition | None:
        """Time passes: move to ``fallback`` once the VTN has been unreachable long enough."""
        if self.state == "fallback" or (self.state == "up" and self.failing_since is None):
            return None
        reference = self.last_success_at if self.last_success_at is not None else self.started_at
        if now - reference >= self.fallback_after_s:
            return self._move("fallback", now, self.last_error)
        return None

    @property
    def in_fallback(self) -> bool:
        return self.state == "fallback"

    def unreachable_for_s(self, now: float) -> float:
        """Seconds since the last success (since start if none); 0 while up."""
        if self.state == "up":
            return 0.0
        return now - (self.last_success_at if self.last_success_at is not None else self.started_at)
