"""The EV model: battery, state of charge, on-board charger limits, taper near full, arrival and departure.

Pure. Time in POSIX seconds, energy in Wh, current in A per phase, voltage in V (phase to neutral).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Ev:
    """One vehicle visit: what the car can take and what the driver needs by departure."""

    ev_id: str
    battery_wh: float
    arrival_soc: float  # 0..1 at arrival
    target_soc: float  # what the driver wants by departure
    arrival_s: float
    departure_s: float
    max_current_a: float = 16.0  # on-board charger, per phase
    min_current_a: float = 6.0  # below this the EV cannot charge (IEC 61851)
    phases: int = 3
    taper_soc: float = 0.8  # above this SoC the accepted current falls linearly
    announces_needs: bool = True  # 2.0.1: sends NotifyEVChargingNeeds
    delivered_wh: float = 0.0

    @property
    def soc(self) -> float:
        """State of charge now, 0..1."""
        return min(1.0, self.arrival_soc + self.delivered_wh / self.battery_wh)

    @property
    def energy_need_wh(self) -> float:
        """Energy the driver asked for at arrival, Wh."""
        return max(0.0, (self.target_soc - self.arrival_soc) * self.battery_wh)

    @property
    def remaining_wh(self) -> float:
        return max(0.0, self.energy_need_wh - self.delivered_wh)

    @property
    def full(self) -> bool:
        """Reached the driver's target (the car's charge limit) or a full battery."""
        return self.soc >= min(0.999, self.target_soc) - 1e-9

    def acceptable_current_a(self) -> float:
        """Current per phase A the car accepts now (taper above `taper_soc`, 0 when full)."""
        if self.full:
            return 0.0
        if self.soc <= self.taper_soc:
            return self.max_current_a
        frac = (1.0 - self.soc) / max(1e-6, 1.0 - self.taper_soc)
        return max(self.min_current_a, self.max_current_a * frac)

    def draw_a(self, offered_a: float | None, phases_allowed: int | None = None) -> tuple[float, int]:
        """Current per phase A and phase count the car draws when `offered_a` (None = unlimited) is offered."""
        phases = min(self.phases, phases_allowed) if phases_allowed else self.phases
        want = self.acceptable_current_a()
        cur = want if offered_a is None else min(want, offered_a)
        if cur < self.min_current_a - 1e-9:
            return 0.0, phases
        return cur, phases

    def charge(self, current_a: float, phases: int, dt_s: float, voltage_v: float) -> float:
        """Integrate `dt_s` of charging; return the energy Wh taken from the grid."""
        if current_a <= 0 or dt_s <= 0:
            return 0.0
        wh = current_a * phases * voltage_v * dt_s / 3600.0
        room = max(0.0, (min(1.0, self.target_soc) - self.soc) * self.battery_wh)
        wh = min(wh, room)
        self.delivered_wh += wh
        return wh

    def present(self, t: float) -> bool:
        return self.arrival_s <= t < self.departure_s
