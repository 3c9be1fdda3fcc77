"""Wiring of the allocation service: ``create_service`` for hosts, ``main`` for ``python -m``."""

from __future__ import annotations

import asyncio

from gridcharge.allocation.service import AllocationService
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import Service, load_settings_and_topology, serve
from gridcharge.shared.topology import Topology


def create_service(rt: Runtime, topology: Topology) -> Service:
    """The allocation service on a runtime (bus, store, clock) for one topology."""
    return AllocationService(rt, topology)


create_service.service_name = "allocation"  # type: ignore[attr-defined]


def main() -> None:
    """Run the allocation service alone (HTTP on GRIDCHARGE_HTTP_PORT, 8083 in the container)."""
    settings, topology = load_settings_and_topology()
    asyncio.run(serve([create_service], settings, topology))
