"""§14a EnWG dimming: what the DSO's control box commands, as one limit on the site's controllable devices (pure).

Two inputs, either or both configured:
- a **relay** (the control box's contact, read over Modbus TCP): closed = dim to the relay limit (by default the
  statutory minimum) for as long as it stays closed. A contact that cannot be read for ``relay_loss_s`` counts
  as closed (unknown means worst case for the grid) until a read succeeds again.
- **LPC**, the EEBUS "Limitation of Power Consumption" use case: the energy guard writes an active limit (W, with
  an optional duration) and sends a heartbeat at least every 60 s. The controllable system's states:
  ``init`` (just started, no heartbeat yet), ``unlimited_controlled``, ``limited``, ``failsafe`` (heartbeat lost
  for ``heartbeat_timeout_s`` = 120 s: the failsafe consumption limit applies for the failsafe duration, at least
  2 h) and ``unlimited_autonomous`` (the failsafe duration ran out without a heartbeat). A heartbeat ends
  ``failsafe``/``unlimited_autonomous``: the energy guard's own command applies again.

Whatever is commanded, the limit is never below the statutory minimum (BNetzA BK6-22-300, Anlage 1): 4.2 kW per
directly controlled device, or behind an energy-management system for n devices
``P_min = 4.2 kW + (n − 1) · 4.2 kW · GZF(n)``. Several active inputs: the lowest limit wins.

Times are POSIX seconds from the injected clock; powers are W in total over all phases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

DEVICE_MINIMUM_W = 4200.0  # BK6-22-300 Anlage 1: guaranteed power per controllable device
LPC_HEARTBEAT_TIMEOUT_S = 120.0  # EEBUS LPC: heartbeat missing this long = communication lost
LPC_FAILSAFE_LIMIT_W = 4200.0  # EEBUS LPC default failsafe consumption active power limit
LPC_FAILSAFE_MIN_DURATION_S = 2 * 3600.0
LPC_FAILSAFE_MAX_DURATION_S = 24 * 3600.0
MAX_LIMIT_W = 10_000_000.0  # a bound on any commanded value (10 MW): larger is an input error

# Simultaneity factors (Gleichzeitigkeitsfaktor) of BK6-22-300 Anlage 1 for n devices behind one EMS; 0.45 from 9 on.
SIMULTANEITY = {1: 1.0, 2: 0.80, 3: 0.75, 4: 0.70, 5: 0.65, 6: 0.60, 7: 0.55, 8: 0.50}
SIMULTANEITY_9_AND_MORE = 0.45

LpcState = Literal["off", "init", "unlimited_controlled", "limited", "failsafe", "unlimited_autonomous"]
Reason = Literal["", "relay", "relay_unreadable", "lpc", "lpc_failsafe"]


def simultaneity_factor(devices: int) -> float:
    """GZF of BK6-22-300 Anlage 1 for ``devices`` controllable devices behind one EMS."""
    if devices < 1:
        raise ValueError("at least one controllable device")
    return SIMULTANEITY.get(devices, SIMULTANEITY_9_AND_MORE)


def statutory_minimum_w(devices: int, ems: bool, device_minimum_w: float = DEVICE_MINIMUM_W) -> float:
    """The least power (W) a dimming may leave the site's ``devices`` controllable devices.

    Direct control: ``device_minimum_w`` each. With an EMS that shares one limit among them:
    ``P_min = P_dev + (n − 1) · P_dev · GZF(n)``.
    """
    gzf = simultaneity_factor(devices)
    if not ems:
        return devices * device_minimum_w
    return device_minimum_w + (devices - 1) * device_minimum_w * gzf


@dataclass(frozen=True)
class DimmingRules:
    """How the site's control box is read and what its commands mean.

    ``minimum_w``: the statutory minimum (``statutory_minimum_w``); ``relay_limit_w``: the limit while the
    contact is closed (None = the minimum; never below it); ``relay_loss_s``: a contact unreadable this long
    counts as closed (0 = never); LPC: heartbeat timeout, failsafe limit and duration (clamped to 2–24 h).
    """

    minimum_w: float
    relay: bool = True
    lpc: bool = False
    relay_limit_w: float | None = None
    relay_loss_s: float = 30.0
    heartbeat_timeout_s: float = LPC_HEARTBEAT_TIMEOUT_S
    failsafe_limit_w: float = LPC_FAILSAFE_LIMIT_W
    failsafe_duration_s: float = LPC_FAILSAFE_MIN_DURATION_S

    def __post_init__(self) -> None:
        if not (0 < self.minimum_w <= MAX_LIMIT_W):
            raise ValueError("minimum_w must be positive")
        if not (0 < self.heartbeat_timeout_s <= LPC_HEARTBEAT_TIMEOUT_S):
            raise ValueError(f"heartbeat timeout must be in (0, {LPC_HEARTBEAT_TIMEOUT_S:.0f}] s")
        if not (LPC_FAILSAFE_MIN_DURATION_S <= self.failsafe_duration_s <= LPC_FAILSAFE_MAX_DURATION_S):
            raise ValueError("failsafe duration must be 2–24 h")
        if not (0 < self.failsafe_limit_w <= MAX_LIMIT_W):
            raise ValueError("failsafe limit must be positive")
        if self.relay_loss_s < 0:
            raise ValueError("relay loss time must not be negative")

    def floor(self, limit_w: float) -> float:
        """``limit_w`` raised to the statutory minimum."""
        return max(self.minimum_w, limit_w)


@dataclass(frozen=True)
class Dimming:
    """The limit in force: ``limit_w`` total W (None = not dimmed), why, and its known end (None = open)."""

    limit_w: float | None
    reason: Reason = ""
    until: float | None = None

    @property
    def active(self) -> bool:
        return self.limit_w is not None


NOT_DIMMED = Dimming(None)


class DimmingState:
    """The control box's inputs over time; ``evaluate(now)`` says the limit in force (pure, clock injected)."""

    def __init__(self, rules: DimmingRules, started_at: float) -> None:
        self.rules = rules
        self.started_at = started_at
        self.relay_closed = False
        self.relay_read_at: float | None = None  # last successful read
        self.heartbeat_at: float | None = None
        self.lpc_active = False
        self.lpc_limit_w = 0.0
        self.lpc_set_at = started_at
        self.lpc_duration_s = 0.0  # 0 = until further notice
        self.failsafe_limit_w = rules.failsafe_limit_w
        self.failsafe_duration_s = rules.failsafe_duration_s

    # -- inputs ----------------------------------------------------------------------------------------
    def relay_read(self, closed: bool, at: float) -> None:
        """A successful read of the contact."""
        self.relay_closed, self.relay_read_at = closed, at

    def heartbeat(self, at: float) -> None:
        """An LPC heartbeat from the energy guard (any write from it counts as one too)."""
        if self.heartbeat_at is None or at > self.heartbeat_at:
            self.heartbeat_at = at

    def lpc_command(self, active: bool, limit_w: float | None, duration_s: float | None, at: float) -> None:
        """The energy guard writes the active consumption limit: on/off, W, for ``duration_s`` (None/0 = open)."""
        if active and (limit_w is None or not math.isfinite(limit_w) or not 0 <= limit_w <= MAX_LIMIT_W):
            raise ValueError("an active limit needs 0 ≤ limit_w ≤ 10 MW")
        if duration_s is not None and (not math.isfinite(duration_s) or duration_s < 0):
            raise ValueError("duration must be ≥ 0 s")
        self.lpc_active = active
        self.lpc_limit_w = float(limit_w or 0.0)
        self.lpc_set_at = at
        self.lpc_duration_s = float(duration_s or 0.0)
        self.heartbeat(at)

    def lpc_failsafe_values(self, limit_w: float | None, duration_s: float | None, at: float) -> None:
        """The energy guard writes the failsafe limit (W) and duration (s, clamped to 2–24 h)."""
        if limit_w is not None:
            if not math.isfinite(limit_w) or not 0 <= limit_w <= MAX_LIMIT_W:
                raise ValueError("failsafe limit must be 0–10 MW")
            self.failsafe_limit_w = limit_w
        if duration_s is not None:
            if not math.isfinite(duration_s):
                raise ValueError("failsafe duration must be finite")
            self.failsafe_duration_s = min(LPC_FAILSAFE_MAX_DURATION_S, max(LPC_FAILSAFE_MIN_DURATION_S, duration_s))
        self.heartbeat(at)

    # -- state -----------------------------------------------------------------------------------------
    def failsafe_window(self) -> tuple[float, float]:
        """[start, end) of the failsafe that follows the latest heartbeat (or the start) if none comes."""
        last = self.heartbeat_at if self.heartbeat_at is not None else self.started_at
        start = last + self.rules.heartbeat_timeout_s
        return start, start + self.failsafe_duration_s

    def lpc_state(self, now: float) -> LpcState:
        """The LPC state of the controllable system at ``now``."""
        if not self.rules.lpc:
            return "off"
        fs_start, fs_end = self.failsafe_window()
        if now >= fs_end:
            return "unlimited_autonomous"
        if now >= fs_start:
            return "failsafe"
        if self.heartbeat_at is None:
            return "init"
        if self.lpc_active and (self.lpc_duration_s <= 0 or now < self.lpc_set_at + self.lpc_duration_s):
            return "limited"
        return "unlimited_controlled"

    def relay_state(self, now: float) -> Literal["off", "open", "closed", "unreadable"]:
        if not self.rules.relay:
            return "off"
        last = self.relay_read_at if self.relay_read_at is not None else self.started_at
        if self.rules.relay_loss_s > 0 and now - last >= self.rules.relay_loss_s:
            return "unreadable"
        return "closed" if self.relay_closed and self.relay_read_at is not None else "open"

    def evaluate(self, now: float) -> Dimming:
        """The limit in force at ``now``: the lowest of the active inputs, never below the statutory minimum."""
        r = self.rules
        options: list[Dimming] = []
        relay = self.relay_state(now)
        if relay in ("closed", "unreadable"):
            lim = r.floor(r.relay_limit_w if r.relay_limit_w is not None else r.minimum_w)
            options.append(Dimming(lim, "relay" if relay == "closed" else "relay_unreadable", None))
        lpc = self.lpc_state(now)
        if lpc == "limited":
            end = self.lpc_set_at + self.lpc_duration_s if self.lpc_duration_s > 0 else None
            options.append(Dimming(r.floor(self.lpc_limit_w), "lpc", end))
        elif lpc == "failsafe":
            options.append(Dimming(r.floor(self.failsafe_limit_w), "lpc_failsafe", self.failsafe_window()[1]))
        if not options:
            return NOT_DIMMED
        best = min(options, key=lambda d: d.limit_w if d.limit_w is not None else math.inf)
        until = None if any(d.until is None for d in options) else max(d.until for d in options if d.until)
        return Dimming(best.limit_w, best.reason, until)
