"""The allocation service as its own process with e2e timing. The e2e scenarios compress a day into minutes,
so the allocator's time scales are compressed with them: lease epochs of E2E_LEASE_S seconds (default 30)
instead of 20 min (renewal lead, clock skew and the write budget's intervals scaled alike), so a killed
allocator shows its fail-safe within a test's minutes, and planning slots of E2E_SLOT_S (default 60 s)
instead of 15 min, so a stay of two minutes spans more than one slot.
Otherwise exactly `python -m gridcharge.allocation`."""

from __future__ import annotations

import asyncio
import os

from gridcharge.allocation.core.allocator import AllocatorConfig
from gridcharge.allocation.core.leases import LeasePolicy, WritePolicy
from gridcharge.allocation.service import AllocationService
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import load_settings_and_topology, serve
from gridcharge.shared.topology import Topology

LEASE_S = float(os.environ.get("E2E_LEASE_S", "30"))
SLOT_S = float(os.environ.get("E2E_SLOT_S", "60"))


def create_service(rt: Runtime, topology: Topology) -> AllocationService:
    return AllocationService(
        rt,
        topology,
        AllocatorConfig(
            leases=LeasePolicy(epoch_s=LEASE_S, renew_lead_s=LEASE_S / 5, clock_skew_s=min(30.0, LEASE_S / 20)),
            writes=WritePolicy(min_interval_s=LEASE_S / 10, max_per_hour=3600, raise_hold_s=LEASE_S / 10),
            slot_s=SLOT_S,
            horizon_slots=120,
            plan_interval_s=5.0,
        ),
    )


create_service.service_name = "allocation"  # type: ignore[attr-defined]

if __name__ == "__main__":
    settings, topology = load_settings_and_topology()
    asyncio.run(serve([create_service], settings, topology))
