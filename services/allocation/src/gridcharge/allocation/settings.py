"""Allocation settings: the shared GRIDCHARGE_* settings plus GRIDCHARGE_ALLOCATION_* keys (lease timing and
the per-station write budget, docs/allocation.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from gridcharge.allocation.core.allocator import AllocatorConfig
from gridcharge.allocation.core.leases import LeasePolicy, WritePolicy
from gridcharge.shared.config import Settings
from gridcharge.shared.errors import ConfigError


class AllocationSettings(Settings):
    """GRIDCHARGE_ALLOCATION_EPOCH_S etc. Times in s, currents in A."""

    allocation_epoch_s: float = 1200.0  # station-cap leases end on multiples of this
    allocation_renew_lead_s: float = 240.0  # renewals go out this long before an epoch ends
    allocation_clock_skew_s: float = 30.0  # station clocks are trusted to ± this
    allocation_write_min_interval_s: float = 60.0  # between two writes to a station (lowerings apart)
    allocation_writes_per_hour: int = 6  # beyond this, only lowerings and renewals
    allocation_raise_hold_s: float = 60.0  # no raise this soon after a lowering
    allocation_raise_min_step_a: float = 1.0  # smaller raises wait for the renewal
    allocation_plan_interval_s: float = 60.0  # a regular re-plan at least this often
    allocation_slot_s: float = 900.0  # planning slot
    allocation_horizon_slots: int = 96  # planning horizon in slots
    allocation_priority_charging_level: int = 10  # session priority while OCPP 2.1 priority charging is on
    allocation_one_phase_w_leases: bool = True  # a single-phase car's lease in W on one phase (docs/allocation.md)
    allocation_low_voltage: float = 0.9  # lowest voltage a W limit may meet, × nominal

    @classmethod
    def derive(cls, base: Settings, env: Mapping[str, str] | None = None) -> AllocationSettings:
        """The host's settings plus allocation keys from the environment."""
        env = os.environ if env is None else env
        return cls.from_env(env, **base.model_dump())

    def allocator_config(self) -> AllocatorConfig:
        """The allocator's configuration; inconsistent lease timing is a ConfigError naming the variables."""
        try:
            leases = LeasePolicy(self.allocation_epoch_s, self.allocation_renew_lead_s, self.allocation_clock_skew_s)
        except ValueError:
            raise ConfigError(
                "environment",
                "GRIDCHARGE_ALLOCATION_EPOCH_S",
                "needs GRIDCHARGE_ALLOCATION_RENEW_LEAD_S × 1.25 + 3 × GRIDCHARGE_ALLOCATION_CLOCK_SKEW_S"
                f" < epoch (got epoch {self.allocation_epoch_s} s, lead {self.allocation_renew_lead_s} s,"
                f" skew {self.allocation_clock_skew_s} s)",
            ) from None
        if (
            self.allocation_writes_per_hour < 1
            or min(self.allocation_write_min_interval_s, self.allocation_raise_hold_s, self.allocation_raise_min_step_a)
            < 0
        ):
            raise ConfigError(
                "environment",
                "GRIDCHARGE_ALLOCATION_WRITES_PER_HOUR",
                "the write budget needs ≥ 1 write per hour and non-negative times and steps",
            )
        if self.allocation_slot_s <= 0 or self.allocation_horizon_slots < 1 or self.allocation_plan_interval_s <= 0:
            raise ConfigError(
                "environment", "GRIDCHARGE_ALLOCATION_SLOT_S", "slot, horizon and plan interval must be positive"
            )
        writes = WritePolicy(
            self.allocation_write_min_interval_s,
            self.allocation_writes_per_hour,
            self.allocation_raise_hold_s,
            self.allocation_raise_min_step_a,
        )
        if not 0 <= self.allocation_priority_charging_level <= 100:
            raise ConfigError(
                "environment",
                "GRIDCHARGE_ALLOCATION_PRIORITY_CHARGING_LEVEL",
                f"must be 0..100 like a session priority (got {self.allocation_priority_charging_level})",
            )
        if not 0.5 <= self.allocation_low_voltage <= 1.0:
            raise ConfigError(
                "environment",
                "GRIDCHARGE_ALLOCATION_LOW_VOLTAGE",
                f"must be 0.5..1.0 (a fraction of the nominal voltage; got {self.allocation_low_voltage})",
            )
        return AllocatorConfig(
            slot_s=self.allocation_slot_s,
            horizon_slots=self.allocation_horizon_slots,
            plan_interval_s=self.allocation_plan_interval_s,
            leases=leases,
            writes=writes,
            priority_charging_level=self.allocation_priority_charging_level,
            one_phase_w_leases=self.allocation_one_phase_w_leases,
            low_voltage=self.allocation_low_voltage,
        )
