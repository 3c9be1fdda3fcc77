"""Control-box settings: the shared settings plus GRIDCHARGE_CONTROLBOX_* keys (docs/grid-interfaces.md, §14a).

Kept apart from main.py so the start-up check of variable names can import it cheaply. The service is
configured when ``GRIDCHARGE_CONTROLBOX_NODE`` is set; `gridcharge serve` then runs it with the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from gridcharge.controlbox.core.dimming import (
    LPC_FAILSAFE_LIMIT_W,
    LPC_FAILSAFE_MAX_DURATION_S,
    LPC_FAILSAFE_MIN_DURATION_S,
    LPC_HEARTBEAT_TIMEOUT_S,
    DimmingRules,
    statutory_minimum_w,
)
from gridcharge.shared.config import ENV_PREFIX, Settings
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.topology import Topology
from pydantic import Field

NODE_VAR = ENV_PREFIX + "CONTROLBOX_NODE"


class ControlboxSettings(Settings):
    """GRIDCHARGE_CONTROLBOX_* keys. Powers in W (total over the phases), times in s."""

    controlbox_node: str = ""  # grid node the §14a limit applies to ("" = service off)
    controlbox_devices: int = Field(1, ge=1, le=10_000)  # controllable devices (charge points) behind it
    controlbox_ems: bool = True  # gridcharge shares one limit among them (BNetzA GZF formula)
    controlbox_relay: Literal["off", "modbus"] = "off"
    controlbox_modbus_host: str = "127.0.0.1"
    controlbox_modbus_port: int = Field(502, ge=1, le=65535)
    controlbox_modbus_unit: int = Field(1, ge=0, le=255)
    controlbox_modbus_address: int = Field(0, ge=0, le=65535)
    controlbox_modbus_kind: Literal["coil", "discrete_input"] = "discrete_input"
    controlbox_modbus_active_closed: bool = True  # contact closed (1) = dim; false: open (0) = dim
    controlbox_modbus_poll_s: float = Field(1.0, ge=0.1, le=60)
    controlbox_modbus_timeout_s: float = Field(2.0, gt=0, le=30)
    controlbox_relay_loss_s: float = Field(30.0, ge=0, le=3600)  # unreadable this long = dimmed (0 = never)
    controlbox_relay_limit_w: float | None = Field(None, gt=0, le=10_000_000)  # unset = the statutory minimum
    controlbox_lpc: Literal["off", "http", "file"] = "off"
    controlbox_lpc_file: Path | None = None  # JSON written by an EEBUS sidecar (lpc=file)
    controlbox_lpc_heartbeat_timeout_s: float = Field(LPC_HEARTBEAT_TIMEOUT_S, gt=0, le=LPC_HEARTBEAT_TIMEOUT_S)
    controlbox_lpc_failsafe_limit_w: float = Field(LPC_FAILSAFE_LIMIT_W, gt=0, le=10_000_000)
    controlbox_lpc_failsafe_duration_s: float = Field(
        LPC_FAILSAFE_MIN_DURATION_S, ge=LPC_FAILSAFE_MIN_DURATION_S, le=LPC_FAILSAFE_MAX_DURATION_S
    )
    controlbox_publish_s: float = Field(30.0, ge=1, le=600)  # re-publish an active limit this often
    controlbox_hold_s: float = Field(300.0, ge=10, le=86_400)  # an open-ended limit's window reaches this far

    @classmethod
    def derive(cls, base: Settings, env: Mapping[str, str] | None = None) -> ControlboxSettings:
        """The host's settings plus the control-box keys from the environment."""
        return cls.from_env(os.environ if env is None else env, **base.model_dump())

    @property
    def configured(self) -> bool:
        return bool(self.controlbox_node)

    def rules(self, topology: Topology) -> DimmingRules:
        """The dimming rules; an unusable combination is a ConfigError naming the variable."""
        if self.controlbox_node not in topology.node_by_id:
            raise ConfigError("environment", NODE_VAR, f"unknown node {self.controlbox_node[:64]!r} in the topology")
        if self.controlbox_relay == "off" and self.controlbox_lpc == "off":
            raise ConfigError(
                "environment",
                ENV_PREFIX + "CONTROLBOX_RELAY",
                "no input: set GRIDCHARGE_CONTROLBOX_RELAY=modbus and/or GRIDCHARGE_CONTROLBOX_LPC",
            )
        if self.controlbox_lpc == "file" and self.controlbox_lpc_file is None:
            raise ConfigError("environment", ENV_PREFIX + "CONTROLBOX_LPC_FILE", "required with CONTROLBOX_LPC=file")
        minimum = statutory_minimum_w(self.controlbox_devices, self.controlbox_ems)
        return DimmingRules(
            minimum_w=minimum,
            relay=self.controlbox_relay != "off",
            lpc=self.controlbox_lpc != "off",
            relay_limit_w=self.controlbox_relay_limit_w,
            relay_loss_s=self.controlbox_relay_loss_s,
            heartbeat_timeout_s=self.controlbox_lpc_heartbeat_timeout_s,
            failsafe_limit_w=self.controlbox_lpc_failsafe_limit_w,
            failsafe_duration_s=self.controlbox_lpc_failsafe_duration_s,
        )
