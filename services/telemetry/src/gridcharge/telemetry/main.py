"""Wiring of the telemetry service: ``create_service`` for hosts, ``main`` for ``python -m``."""

from __future__ import annotations

from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import run_service
from gridcharge.shared.topology import Topology
from gridcharge.telemetry.service import TelemetryService
from gridcharge.telemetry.settings import TelemetrySettings

DEFAULT_HTTP_PORT = 8081  # when run alone (docs/DEVELOPING.md); the embedded process serves all on 8080


def create_service(rt: Runtime, topology: Topology) -> TelemetryService:
    """Service factory for `gridcharge serve`, the embedded demo and `python -m gridcharge.telemetry`."""
    return TelemetryService(rt, topology, TelemetrySettings.derive(rt.settings))


create_service.service_name = "telemetry"  # type: ignore[attr-defined]


def main() -> int:
    """Run telemetry alone (HTTP on GRIDCHARGE_HTTP_PORT, default 8081)."""
    return run_service("telemetry", [create_service], DEFAULT_HTTP_PORT)
