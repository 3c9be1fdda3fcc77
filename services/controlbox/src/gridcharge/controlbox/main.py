"""Wiring of the control-box service: settings → relay/LPC inputs → ControlboxService; ``main`` for ``python -m``."""

from __future__ import annotations

from gridcharge.controlbox.adapters.lpc import LpcFile
from gridcharge.controlbox.adapters.modbus import ModbusRelay
from gridcharge.controlbox.service import ControlboxService
from gridcharge.controlbox.settings import NODE_VAR, ControlboxSettings
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import run_service
from gridcharge.shared.topology import Topology


def create_service(rt: Runtime, topology: Topology) -> ControlboxService:
    """Factory used by `gridcharge serve` (when GRIDCHARGE_CONTROLBOX_NODE is set) and `python -m`."""
    settings = ControlboxSettings.derive(rt.settings)
    if not settings.configured:
        raise ConfigError("environment", NODE_VAR, "required: the grid node the §14a control box dims")
    relay = None
    if settings.controlbox_relay == "modbus":
        relay = ModbusRelay(
            settings.controlbox_modbus_host,
            settings.controlbox_modbus_port,
            settings.controlbox_modbus_unit,
            settings.controlbox_modbus_address,
            settings.controlbox_modbus_kind,
            settings.controlbox_modbus_active_closed,
            settings.controlbox_modbus_timeout_s,
        )
    lpc_file = None
    if settings.controlbox_lpc == "file" and settings.controlbox_lpc_file is not None:
        lpc_file = LpcFile(settings.controlbox_lpc_file)
    return ControlboxService(rt, topology, settings, relay, lpc_file)


create_service.service_name = "controlbox"  # type: ignore[attr-defined]


DEFAULT_HTTP_PORT = 8084  # when run alone; the embedded process serves all on 8080


def main() -> int:
    """Run the control-box service alone (HTTP on GRIDCHARGE_HTTP_PORT, default 8084)."""
    return run_service("controlbox", [create_service], DEFAULT_HTTP_PORT)
