"""Wiring of the allocation service: ``create_service`` for hosts, ``main`` for ``python -m``."""

from __future__ import annotations

from gridcharge.allocation.service import AllocationService
from gridcharge.allocation.settings import AllocationSettings
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import Service, run_service
from gridcharge.shared.topology import Topology


def create_service(rt: Runtime, topology: Topology) -> Service:
    """The allocation service on a runtime (bus, store, clock) for one topology; GRIDCHARGE_ALLOCATION_*
    settings from the environment."""
    return AllocationService(rt, topology, AllocationSettings.derive(rt.settings).allocator_config())


create_service.service_name = "allocation"  # type: ignore[attr-defined]


DEFAULT_HTTP_PORT = 8083  # when run alone (docs/DEVELOPING.md); the embedded process serves all on 8080


def main() -> int:
    """Run the allocation service alone (HTTP on GRIDCHARGE_HTTP_PORT, default 8083)."""
    return run_service("allocation", [create_service], DEFAULT_HTTP_PORT)
