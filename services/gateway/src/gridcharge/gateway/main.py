"""Wiring of the gateway: ``create_service`` for hosts, ``main`` for ``python -m``. No logic here."""

from __future__ import annotations

import gc

from gridcharge.gateway.config import gateway_settings
from gridcharge.gateway.service import GatewayService
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import run_service
from gridcharge.shared.topology import Topology


def create_service(rt: Runtime, topology: Topology) -> GatewayService:
    return GatewayService(rt, topology)


create_service.service_name = "gateway"  # type: ignore[attr-defined]


def _tune_gc() -> None:
    # A gateway process holds many long-lived small objects per connection: move start-up objects out of
    # the collector's reach and collect the young generation less often (fewer, shorter GC pauses in the
    # latency tail). Only here, where the gateway owns the process; embedded hosts keep their defaults.
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def main() -> int:
    """Run the gateway alone (HTTP on GRIDCHARGE_HTTP_PORT, default 8080)."""
    return run_service("gateway", [create_service], None, prepare=gateway_settings, before_run=_tune_gc)
